"""``make bench``: ingestd against curl and its own targets, on loopback (see bench/run.py)."""
