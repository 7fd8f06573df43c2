"""`python -m diffill ...` is the same as the `diffill` console script."""

import sys

from diffill.cli import main

sys.exit(main())
