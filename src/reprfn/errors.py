"""One error hierarchy: what a user can fix is a ``ReprfnError``; anything else is a bug.

The command line turns exactly these (and ``OSError`` on the user's paths) into one line on
stderr and exit status 2. Any other exception is reported as an internal error with a hint to
rerun with ``REPRFN_DEBUG=1`` for the traceback, so that a ``ValueError`` raised by a bug is
never dressed up as the user's mistake.

``ReprfnError`` derives from ``ValueError`` so that callers of the Python API who caught
``ValueError`` before this hierarchy existed keep working.
"""

from __future__ import annotations


class ReprfnError(ValueError):
    """A failure the user can fix; its message is one line that names the file or key at fault."""


class UsageError(ReprfnError):
    """A bad argument: a flag, an API parameter, a path that cannot be used."""


class CheckpointError(ReprfnError):
    """A weights file that cannot be loaded as it claims (unknown layout, bad metadata, NaN...)."""


class ImageError(ReprfnError):
    """An image that cannot be decoded, or cannot be written in the format asked for."""


class VideoError(ImageError):
    """A video that cannot be decoded (corrupt, truncated, no video stream) or written as asked (a
    codec or stream the chosen container cannot hold); an ``ImageError`` for callers that catch those."""


class ResourceError(ReprfnError):
    """A request larger than the limits set (pixels, memory): refused before any work."""


class DownloadError(ReprfnError):
    """A named model that could not be fetched (no network, an HTTP error, a timeout) or that is not
    the published file (size, SHA-256); the message names the URL to fetch and where to save it."""


class ConfigError(ReprfnError):
    """A training configuration value of the wrong type or range, or an unknown key."""


class DataError(ReprfnError):
    """Training or evaluation data that cannot be used (missing folder, image too small...)."""


class TrainingError(ReprfnError):
    """A run that cannot go on (non-finite loss, a checkpoint that does not resume)."""


class ExportError(ReprfnError, RuntimeError):
    """An export that failed, or whose result does not match PyTorch; also a ``RuntimeError``, as
    it was before this hierarchy (docs/export.md)."""


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
