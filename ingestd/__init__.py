"""ingestd: uploads finished recordings from a capture machine to a Valt server."""

__version__ = "0.1.0"

__all__ = ["__version__"]
