"""``python -m natlab``: the same as the installed ``natlab`` console script."""

import sys

from natlab.cli import main

sys.exit(main())
