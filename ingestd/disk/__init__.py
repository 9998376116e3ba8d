"""Safe work on the disk: judged opens, moves that never replace, ingestd's own private files."""
