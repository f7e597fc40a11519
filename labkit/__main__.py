"""`python -m labkit`: the same command line as the `labkit` script."""

import sys

from labkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
