"""Exit codes: 0 fine; 1 an environment or server problem, or work not done; 2 bad usage or
bad configuration. Apart so that main's dispatch loads nothing a command does not run."""

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
