"""``python -m fpgm_ext``: the ``fpgm-ext`` command line (see fpgm_ext/cli.py)."""
import sys

from .cli import main

sys.exit(main())
