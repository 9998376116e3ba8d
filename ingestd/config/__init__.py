"""The configuration: typed frozen sections, their parsers, and where secrets come from."""
