"""The crash, fault and file-system campaign (``make chaos``); not part of the product."""
