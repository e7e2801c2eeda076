import sys

from .tooling.runner import main

if __name__ == "__main__":
    sys.exit(main())
