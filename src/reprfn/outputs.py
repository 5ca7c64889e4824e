"""Output plans: every writer checks where its results will go before it does any work.

A batch that maps two inputs to one output file would write one, overwrite it with the other and
report both as done; an output that is one of the inputs would destroy it. Both are mistakes of
the plan (names, ``-o``, ``--ext``, ``--suffix``), so they are refused as a whole, before any file
is written, rather than found half-way through a batch. ``reprfn upscale`` (every torchrun rank
checks the full list before taking its shard), ``reprfn.upscale_file`` and ``reprfn eval
--save-dir`` share this one check.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Union

from .errors import UsageError

PathLike = Union[str, "os.PathLike[str]"]

# The usual file systems of macOS and Windows ignore case: A.png and a.png are one file there.
FOLDS_CASE = sys.platform in ("darwin", "win32")


def _key(path: PathLike, fold_case: bool) -> str:
    """What identifies a file: its absolute path with symlinks followed (and case folded where the
    file system ignores it). Reads links only; nothing is created."""
    key = os.path.normcase(os.path.realpath(path))
    return key.casefold() if fold_case else key


def refuse_collisions(plan: Iterable[tuple[PathLike, PathLike]], *, fold_case: bool = FOLDS_CASE) -> None:
    """Raise ``UsageError`` (one line naming both inputs) if two inputs of ``plan``, a sequence of
    ``(input, output)`` pairs, share one output, or if an output is one of the inputs.

    The same input listed twice with the same output is not a collision: it writes the same file.
    """
    plan = list(plan)
    inputs = {_key(src, fold_case): src for src, _ in plan}
    owners: dict[str, PathLike] = {}
    for src, dst in plan:
        key = _key(dst, fold_case)
        if key in inputs:
            raise UsageError(f"{dst}: would overwrite an input ({inputs[key]}); "
                             "write elsewhere (another output folder or suffix)")
        first = owners.setdefault(key, src)
        if _key(first, fold_case) != _key(src, fold_case):
            raise UsageError(f"{first} and {src} would both be written to {dst}: refused, nothing written")
