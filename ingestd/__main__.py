"""python -m ingestd"""

from ingestd.commands.main import main

if __name__ == "__main__":
    main()
