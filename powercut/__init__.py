"""A file system for tests that forgets, at a power cut, what was never synced.

A FUSE layer over a backing folder (``store.py``: the disk; ``volume.py``:
the running system's view and the durability rules; ``fs.py``: the kernel
requests; ``control.py``: mount, cut, remount). ``campaign.py`` runs the
daemon on it and cuts the power at random moments. Not part of the product.
"""

from powercut.control import PowerCutError, PowerCutMount, missing, mount
from powercut.volume import MODES

__all__ = ["MODES", "PowerCutError", "PowerCutMount", "missing", "mount"]
