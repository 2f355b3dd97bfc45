"""``python -m DoseAlignLib`` and the ``dosealign`` console command: Ctrl-C is held while the command's modules load.

Importing :mod:`DoseAlignLib.cli` takes a few tens of milliseconds (tempfile, dataclasses, argparse, ...). A Ctrl-C
then raised KeyboardInterrupt inside those imports and printed a 20-line traceback (eleventh hostile trial K2).
Here it is held until the command's own handler is in place, which ends the command with exit 130 and one line.
"""

from __future__ import annotations

import signal  # (and nothing else before the hold: an import is where a Ctrl-C lands)

#: The SIGINTs that came while the command's modules were imported.
_HELD: list = []


def _hold(signum, _frame) -> None:
    _HELD.append(signum)


def run() -> None:
    """Hold Ctrl-C (only where it has Python's own handler, in the main thread), import the command, run it."""
    holding = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if holding:
        try:
            signal.signal(signal.SIGINT, _hold)
        except ValueError:  # not the main thread: the command installs no handler either
            holding = False
    from . import cli

    if holding:
        cli._EARLY_SIGINT[:] = [_hold, _HELD]  # the command's handler takes over from _hold (cli.main)
    cli.run()


if __name__ == "__main__":
    run()
