"""The command line: one module per subcommand, each importing only what it runs."""
