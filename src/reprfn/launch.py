"""The ``reprfn`` console script and ``python -m reprfn``: the command line, imported here.

Importing the command line loads PyTorch (a second or more); a Ctrl-C in that time would end in
Python's traceback, since no handler of ours runs yet. This module imports nothing heavy itself
and turns that interrupt into the command's one line and exit status 130.
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from .cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:  # before the command's own handler (cli.status.run) is in place
        print("reprfn: interrupted", file=sys.stderr)
        return 130
