"""``python -m warpsparse``: the command line (see :mod:`warpsparse.cli`)."""
import sys

from warpsparse.cli import main

sys.exit(main())
