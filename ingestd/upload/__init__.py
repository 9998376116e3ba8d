"""One file's way to Valt: its record, pieces, pacing, confirmation, and what happens after."""
