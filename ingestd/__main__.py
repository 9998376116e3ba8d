"""python -m ingestd"""

from ingestd.cli import main

if __name__ == "__main__":
    main()
