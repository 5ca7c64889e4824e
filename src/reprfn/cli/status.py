"""How a command ends: its exit status, and the one line a failure gets on stderr."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from ..errors import ReprfnError, one_line

EXIT_ERROR = 2


def user_line(exc: BaseException) -> str:
    """One line for ``exc``: the message of an error the user can fix, else an internal error."""
    if isinstance(exc, (ReprfnError, OSError)):
        return one_line(exc)
    return f"internal error: {type(exc).__name__}: {one_line(exc)} (set REPRFN_DEBUG=1 for a traceback)"


def run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call a command; turn expected failures into one line on stderr."""
    try:
        return func(args)
    except (ReprfnError, OSError) as exc:
        print(f"reprfn: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("reprfn: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("REPRFN_DEBUG"):
            raise
        print(f"reprfn: {user_line(exc)}", file=sys.stderr)
        return EXIT_ERROR

