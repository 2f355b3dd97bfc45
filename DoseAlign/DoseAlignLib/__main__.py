"""``python -m DoseAlignLib``: the ``dosealign`` command."""

import sys

from .cli import main

sys.exit(main())
