"""``python -m mirrorfs``: the same as the ``mirrorfs`` command."""

import sys

from .cli import main

sys.exit(main())
