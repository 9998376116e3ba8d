"""The daemon's lifecycle: startup, the main loop, the worker pool, shutdown."""
