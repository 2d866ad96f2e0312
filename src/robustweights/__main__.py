"""`python -m robustweights`: the command line (robustweights.cli)."""

import sys

from .cli import main

sys.exit(main())
