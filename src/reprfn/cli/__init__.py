"""The ``reprfn`` command line. Every failure is one line on stderr and a non-zero exit.

``parser`` builds the flags of every subcommand; ``commands`` and ``evaluation`` implement them;
``status`` turns a command's failure into its one line and exit status. ``main`` is what the console
script (``reprfn = reprfn.launch:main``) and ``python -m reprfn`` run, once ``launch`` has
imported it (a Ctrl-C while PyTorch loads is answered there).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence

from .parser import build_parser
from .status import EXIT_ERROR, run, user_line

__all__ = ["EXIT_ERROR", "Terminated", "build_parser", "main", "run", "user_line"]


class Terminated(SystemExit):
    """SIGTERM, raised as an exception so that ``finally`` blocks run (no temporary file is left)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is not threading.main_thread():  # signals go to the main thread only
        return run(args.func, args)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args.func, args)
    except Terminated as exc:
        print("reprfn: terminated", file=sys.stderr)
        return exc.status
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
