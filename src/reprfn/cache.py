"""The one folder reprfn keeps files it can make or fetch again (ONNX exports, downloaded models)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$REPRFN_CACHE``, else ``$XDG_CACHE_HOME/reprfn``, else ``~/.cache/reprfn``: the XDG
    convention, with one variable to move everything (tests, read-only homes, shared machines)."""
    if os.environ.get("REPRFN_CACHE"):
        return Path(os.environ["REPRFN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reprfn"
