"""``python -m leapmcp``: the ``leapmcp`` command."""

import sys

from .cli import main

sys.exit(main())
