"""The Valt server: the HTTP client, every server assumption (rules), share names."""
