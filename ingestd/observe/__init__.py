"""Watching a daemon: health, metrics, alerts and the status port."""
