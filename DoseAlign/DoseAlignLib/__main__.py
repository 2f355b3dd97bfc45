"""``python -m DoseAlignLib``: the ``dosealign`` command."""

from .cli import run

run()
