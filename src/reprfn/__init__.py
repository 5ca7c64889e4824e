"""reprfn: RepRFN and its family for lightweight single-image super-resolution.

The names below are imported on first use (PEP 562), not with the package: ``import reprfn``
and the ``reprfn`` command start without PyTorch, so that the command can answer Ctrl-C in its
first second (while PyTorch loads) with one line instead of Python's traceback.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": ".checkpoint", "load_model": ".checkpoint", "save_model": ".checkpoint",
    "build": ".models", "fuse": ".models",
    "upscale": ".api", "upscale_file": ".api",
    "upscale_video": ".video",
}
__all__ = ["CheckpointError", "__version__", "build", "fuse", "load_model", "save_model", "upscale", "upscale_file",
           "upscale_video"]

if TYPE_CHECKING:
    from .api import upscale, upscale_file
    from .checkpoint import CheckpointError, load_model, save_model
    from .models import build, fuse
    from .video import upscale_video


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reprfn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # imported once: later lookups are plain attributes
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
