"""python -m fastmlp.plot: see fastmlp.plots."""
import sys

from .plots import main

if __name__ == "__main__":
    sys.exit(main())
