"""Which files are videos and where their outputs go: decided from names alone, without PyAV, so
that ``reprfn upscale`` plans a batch (and refuses a bad ``-o``) before anything is decoded."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError

# Inputs read as videos (any container FFmpeg reads; these are the usual names).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                  ".wmv", ".flv", ".3gp", ".ogv")
# Outputs written, and FFmpeg's muxer for each: the temporary file's name (``files.atomic_path``)
# ends in .tmp, so the muxer cannot be guessed from it.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
# A folder output keeps these containers (they hold H.264 and the usual audio); any other input
# becomes .mkv, which holds H.264 and whatever audio or subtitles the input carried (Vorbis from a
# WebM, MP3 or PCM from an AVI, DVB subtitles from a TS), so they can be copied untouched.
KEPT = (".mp4", ".m4v", ".mov", ".mkv")
FALLBACK = ".mkv"
WRITTEN = ", ".join(CONTAINERS)


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``path`` is read as a video: by its suffix, as images are."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def container_of(dst: str | os.PathLike) -> str:
    """FFmpeg's muxer for ``dst``; ``UsageError`` for a suffix reprfn does not write."""
    suffix = Path(dst).suffix.lower()
    if suffix not in CONTAINERS:
        raise UsageError(f"{dst}: cannot write {suffix or 'suffix-less'} videos; name a {WRITTEN} file")
    return CONTAINERS[suffix]


def video_file_output(output: str, *, single: bool, video: bool, ext: str = "auto") -> bool:
    """``-o`` with a video suffix names the output file (True): it must be a container reprfn writes,
    and the input one video file; ``--ext`` (an image format) cannot apply to it."""
    container_of(output)
    if not single:
        raise UsageError(f"-o {output} names one video file, but the input is a folder or several files; "
                         "name a folder")
    if not video:
        raise UsageError(f"-o {output} names a video file, but the input is an image; name an image file or a folder")
    if ext != "auto":
        raise UsageError(f"--ext {ext} is an image format, and -o {output} names a video; drop --ext")
    return True


def video_output_path(src: Path, out: Path, *, single: bool, suffix: str, folder: Path = Path()) -> Path:
    """``out`` itself when it names the file, else ``out/<folder>/<stem><suffix><container>``: the
    input's container when it is one of ``KEPT``, else .mkv (see ``KEPT``)."""
    if single:
        return out
    kept = src.suffix.lower() if src.suffix.lower() in KEPT else FALLBACK
    return out / folder / f"{src.stem}{suffix}{kept}"
