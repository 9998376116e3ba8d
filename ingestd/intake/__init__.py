"""Finding files and judging when each is finished: scan, events, settle, identity, sidecars."""
