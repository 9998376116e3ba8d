"""``python -m powercut BACKING MOUNTPOINT [--mode strict|ordered]``: serve the test file system.

Runs in the foreground until unmounted. Killing it (SIGKILL) is a power cut:
whatever was not durable is gone; mount again to see what the disk kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from powercut.fs import serve
from powercut.volume import MODES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m powercut", description=__doc__.split("\n")[0])
    parser.add_argument("backing", type=Path, help="folder that holds the durable state")
    parser.add_argument("mountpoint", type=Path, help="an empty folder to mount on")
    parser.add_argument("--mode", choices=MODES, default="strict", help="durability rules")
    parser.add_argument("--ready-fd", type=int, help="write one byte here once mounted")
    args = parser.parse_args(argv)
    serve(args.backing, args.mountpoint, args.mode, args.ready_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
