"""Writing files safely: every output of reprfn appears whole or not at all.

``atomic_path`` gives a writer a hidden temporary file next to its target and renames it into
place only once the writer succeeded; ``check_writable`` refuses, before any long work, a target
that could not be written. Images, checkpoints, exports, reports and training logs all use them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError, one_line


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename.

    Readers never see a half-written file, and a failure leaves any old file untouched. The
    temporary file is removed on any exception, ``KeyboardInterrupt`` included (``reprfn``'s
    command line turns SIGTERM into an exception for the same reason). An ``OSError`` that names
    the hidden temporary file is raised again naming ``path``, the file the user asked for.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as exc:  # its message names a random temporary name, not the file asked for
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        os.close(fd)
        yield Path(tmp)
        # the usual permissions (0666 less the umask), set after the writer: mkstemp makes 0600
        # files, and some writers replace the file they are given with their own 0600 one
        # (safetensors' save_file does), which left checkpoints readable by their owner alone
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is None or not (exc.filename == tmp or tmp in str(exc)):
            raise
        if exc.errno is None:
            raise OSError(one_line(exc).replace(tmp, str(path))) from None
        raise OSError(exc.errno, exc.strerror, str(path)) from None  # the errno's subclass
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, before any long work, an output path that ``atomic_path`` could not write.

    The path must not be a directory, and its nearest existing ancestor must be a writable
    directory (missing folders are created by ``atomic_path``). Raises ``UsageError`` naming
    ``path``. The write itself can still fail later (a full disk); this only keeps a mistyped
    path from costing a whole evaluation.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: cannot write the {what}, it is a directory")
    _check_ancestor(path, path.parent, what)
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Refuse, before any work, a folder for outputs that is a file or cannot be created or
    written in: each output would otherwise fail on its own, one by one, after the work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: cannot write the {what} there, it is a file, not a folder")
    _check_ancestor(path, path, what)
    return path


def _check_ancestor(path: Path, parent: Path, what: str) -> None:
    """``parent``, or its nearest existing ancestor, must be a directory this process can write in."""
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{path}: cannot write the {what}, {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{path}: cannot write the {what}, {parent} is not writable")
