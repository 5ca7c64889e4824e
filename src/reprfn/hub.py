"""Models by name: the bundled ones, and third-party releases fetched once, on request, and verified.

``resolve_weights("reprfn-authors-x4")`` gives a local file for a known name; anything that exists
on disk is a path and wins over a name. A third-party file is downloaded only when its name is
asked for (never at import, never as a default), streamed to a temporary file in the cache,
checked against its published size and SHA-256 *before* anything reads it as a checkpoint, and
only then moved into place; a cached copy is checked again before every use. The package holds
names, URLs, hashes and licences, never the third-party files themselves.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .cache import cache_dir
from .errors import CheckpointError, DownloadError, UsageError

TIMEOUT_ENV = "REPRFN_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT = 30.0  # seconds without a byte from the server before a download is given up
CHUNK = 1 << 16


@dataclass(frozen=True)
class ModelEntry:
    """One known model. ``url`` empty: bundled in ``src/reprfn/weights/`` (``file``); otherwise
    downloaded from ``url`` and kept in the cache, where ``size`` and ``sha256`` must match."""

    name: str
    scale: int
    arch: str
    params: int
    psnr_y: tuple[float, float, float]  # Set5, Set14, B100 (docs/evaluation.md), measured with reprfn eval
    licence: str
    source: str  # who made it
    file: str
    url: str = ""
    sha256: str = ""
    size: int = 0

    @property
    def bundled(self) -> bool:
        return not self.url


def _ours(scale: int, params: int, psnr_y: tuple[float, float, float]) -> ModelEntry:
    return ModelEntry(f"reprfn-x{scale}", scale, "reprfn", params, psnr_y, "MIT", "reprfn (our training)",
                      f"reprfn_x{scale}.safetensors")


MODELS: dict[str, ModelEntry] = {
    "reprfn-x2": _ours(2, 385_916, (37.57, 33.11, 32.00)),
    "reprfn-x3": _ours(3, 392_411, (33.84, 29.95, 28.92)),
    "reprfn-x4": _ours(4, 401_504, (31.72, 28.28, 27.41)),
    "reprfn-authors-x4": ModelEntry(
        "reprfn-authors-x4", 4, "reprfn", 401_504, (32.20, 28.65, 27.60), "MIT",
        "laonafahaodange/RepRFN (the paper's authors)", "reprfn_ntire_x4.pth",
        url="https://github.com/laonafahaodange/RepRFN/raw/main/model_zoo/reprfn_ntire_x4.pth",
        sha256="eae6c2e8a7c94048bc392b1333b5a3c1c11c9d84a3bbec9ea7a4e8927436acac", size=1_633_659),
    "rfdn-ntire-x4": ModelEntry(
        "rfdn-ntire-x4", 4, "rfdn", 433_448, (32.16, 28.65, 27.61), "MIT",
        "NTIRE 2023 efficient SR challenge baseline (laonafahaodange/NTIRE2023-ESR-RepRFN)", "rfdn_ntire_x4.pth",
        url="https://github.com/laonafahaodange/NTIRE2023-ESR-RepRFN/raw/main/model_zoo/team00_rfdn.pth",
        sha256="11af8ec8ebd68689e90ef1e29044f9804c72d3bd9f7573820b7b26035782760c", size=1_754_927),
}


def models_dir() -> Path:
    """Where downloaded models are kept: ``cache_dir()/models``."""
    return cache_dir() / "models"


def cached_path(entry: ModelEntry) -> Path:
    """The cache file of a downloaded model; its name carries the start of the hash, so that a
    registry entry pointing at a new release never picks up the old file."""
    stem, dot, ext = entry.file.rpartition(".")
    return models_dir() / f"{stem}-{entry.sha256[:8]}{dot}{ext}"


def local_path(entry: ModelEntry) -> Path:
    """Where the model's file is (bundled) or would be (downloaded); nothing is fetched."""
    if entry.bundled:
        from .checkpoint import bundled_weights

        return bundled_weights(entry.scale)
    return cached_path(entry)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def mismatch(path: Path, entry: ModelEntry) -> str | None:
    """Why ``path`` is not the published file of ``entry`` (size, then SHA-256), or None."""
    size = path.stat().st_size
    if size != entry.size:
        return f"{size:,} bytes, expected {entry.size:,}"
    digest = file_sha256(path)
    if digest != entry.sha256:
        return f"SHA-256 {digest}, expected {entry.sha256}"
    return None


def download_timeout() -> float:
    """Seconds a stalled server is waited for: ``$REPRFN_DOWNLOAD_TIMEOUT``, default 30."""
    text = os.environ.get(TIMEOUT_ENV, "")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{TIMEOUT_ENV}={text!r}: give a number of seconds > 0")
    return value


def _by_hand(entry: ModelEntry, dest: Path) -> str:
    return f"download {entry.url} by hand and save it as {dest}"


def _reason(exc: BaseException, timeout: float) -> str:
    """What went wrong with a request, in a few words (HTTP status, refused connection, timeout)."""
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        if not isinstance(exc.reason, BaseException):
            return str(exc.reason)
        exc = exc.reason
    if isinstance(exc, TimeoutError):
        return f"no data from the server for {timeout:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def download(entry: ModelEntry, dest: Path, *, timeout: float | None = None, progress: bool = True) -> Path:
    """Fetch ``entry.url`` to ``dest``: streamed to a temporary file next to it, checked (size,
    SHA-256), then renamed into place, so ``dest`` is either absent or the verified file.
    Any failure (network, HTTP status, timeout, short or long body, wrong hash) is one
    ``DownloadError`` line; the temporary file is always removed."""
    import http.client
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    timeout = download_timeout() if timeout is None else timeout
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise DownloadError(f"cannot write into the model cache {dest.parent} ({exc.strerror or exc}): "
                            f"set REPRFN_CACHE to a writable folder, or {_by_hand(entry, dest)}") from None
    tmp = Path(name)
    request = urllib.request.Request(entry.url, headers={"User-Agent": f"reprfn/{__version__} (Python urllib)"})
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response, tqdm(
                    total=entry.size, unit="B", unit_scale=True, unit_divisor=1024, desc=entry.name,
                    file=sys.stderr, disable=None if progress else True, leave=False,
                ) as bar:
                    received = 0
                    while chunk := response.read(CHUNK):
                        received += len(chunk)
                        if received > entry.size:
                            break  # more than the published file: refused below, without reading on
                        out.write(chunk)
                        bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:  # URLError, HTTPError, timeouts, short reads
                if isinstance(exc, urllib.error.HTTPError):
                    exc.close()
                raise DownloadError(f"cannot download {entry.name} from {entry.url} ({_reason(exc, timeout)}); "
                                    f"{_by_hand(entry, dest)}") from None
        if received < entry.size:  # the connection closed early (some Python versions say IncompleteRead)
            raise DownloadError(f"cannot download {entry.name} from {entry.url} (the connection closed after "
                                f"{received:,} of {entry.size:,} bytes); {_by_hand(entry, dest)}")
        problem = mismatch(tmp, entry) if received == entry.size else f"more than {entry.size:,} bytes"
        if problem:
            raise DownloadError(f"{entry.name} from {entry.url} is not the published file ({problem}): "
                                f"deleted, nothing loaded; {_by_hand(entry, dest)}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fetch(entry: ModelEntry, *, timeout: float | None = None, progress: bool = True) -> Path:
    """The verified local file of a third-party model: the cached copy if it still matches its
    hash (a changed or damaged copy is deleted and fetched again), else downloaded now."""
    dest = cached_path(entry)
    if dest.is_file():
        problem = mismatch(dest, entry)
        if problem is None:
            return dest
        dest.unlink(missing_ok=True)
        print(f"reprfn: warning: {dest} is not the published {entry.name} ({problem}): deleted, "
              "downloading it again", file=sys.stderr)
    if progress:
        print(f"reprfn: downloading {entry.name} ({entry.licence}, {entry.size / 1e6:.1f} MB) from {entry.url}",
              file=sys.stderr)
    return download(entry, dest, timeout=timeout, progress=progress)


def resolve_weights(name_or_path: str | os.PathLike, *, timeout: float | None = None,
                    progress: bool = True) -> Path:
    """A checkpoint file for a path or a known model name (``MODELS``). An existing path always
    wins over a name; a third-party name is fetched on first use (``fetch``); anything else is
    one line listing the known names."""
    if not os.fspath(name_or_path).strip():  # Path("") is the current folder
        raise CheckpointError(f"an empty weights path; give a checkpoint file or a model name ({', '.join(MODELS)})")
    path = Path(name_or_path)
    if path.exists():
        return path
    entry = MODELS.get(os.fspath(name_or_path))
    if entry is None:
        raise CheckpointError(f"no such file or model name: {os.fspath(name_or_path)}; "
                              f"known models: {', '.join(MODELS)}")
    return local_path(entry) if entry.bundled else fetch(entry, timeout=timeout, progress=progress)


# ----------------------------------------------------------------------------------------------
# `reprfn models`: what is known, where it comes from, whether it is here (nothing is fetched)
# ----------------------------------------------------------------------------------------------

DATASETS = ("Set5", "Set14", "B100")


def model_info(entry: ModelEntry) -> dict[str, object]:
    """Everything known about ``entry``, for ``reprfn models --json``. A bundled model's size and
    hash are read from its file (they change when it is retrained); a downloaded one's are the
    published values its file is checked against."""
    path = local_path(entry)
    if entry.bundled:
        size, sha256, status = path.stat().st_size, file_sha256(path), "bundled"
    else:
        size, sha256 = entry.size, entry.sha256
        status = "downloaded" if path.is_file() else "downloaded on request"
    return {"name": entry.name, "scale": entry.scale, "arch": entry.arch, "params": entry.params,
            "psnr_y": dict(zip(DATASETS, entry.psnr_y, strict=True)), "licence": entry.licence, "source": entry.source,
            "url": entry.url or None, "sha256": sha256, "size": size, "status": status, "path": str(path)}


def format_models(infos: list[dict]) -> str:
    """A table (scale, parameters, Y-PSNR, size, licence, status), then each model's origin and hash."""
    width = max(len("model"), *(len(i["name"]) for i in infos))
    lines = [f"{'model':<{width}}  scale  {'params':>7}  {'Set5':>5}  {'Set14':>5}  {'B100':>5}  {'size':>6}  "
             "licence  status"]
    for i in infos:
        scores = "  ".join(f"{i['psnr_y'][d]:>5.2f}" for d in DATASETS)
        lines.append(f"{i['name']:<{width}}  {'x' + str(i['scale']):>5}  {i['params']:>7,}  {scores}  "
                     f"{i['size'] / 1e6:>4.1f}MB  {i['licence']:<7}  {i['status']}")
    lines.append("Y-PSNR in dB (docs/evaluation.md); use a name wherever a checkpoint is asked for: -w NAME")
    for i in infos:
        lines += ["", f"{i['name']}: {i['source']}", f"  {i['url'] or i['path']}", f"  sha256 {i['sha256']}"]
        lines += [f"  saved as {i['path']}"] if i["url"] else []
    return "\n".join(lines)
