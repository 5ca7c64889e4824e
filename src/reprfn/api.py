"""The Python API: ``reprfn.upscale`` for images in memory, ``upscale_file`` for files.

Images keep their kind: greyscale stays greyscale, 16-bit stays 16-bit, alpha is upscaled on its
own with MATLAB bicubic (the model only ever sees colour) and re-attached.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeAlias, overload

import numpy as np
import torch
from torch import nn

from .checkpoint import bundled_weights, load_model
from .errors import ReprfnError, ResourceError, UsageError
from .files import check_writable
from .images import IMAGE_SUFFIXES, Picture, load_picture, save_picture, write_memory
from .models import SRModel
from .outputs import refuse_collisions
from .resize import imresize_rows, output_length
from .runtime.hardware import PrecisionChoice as Precision
from .runtime.hardware import resolve_device
from .runtime.info import describe
from .runtime.memory import DEFAULT_PAD, auto_tile
from .runtime.prepare import Backend, Runner, as_runner, prepare
from .runtime.run import run, run_pixels
from .video.paths import VIDEO_SUFFIXES, is_video, video_file_output, video_output_path

ModelLike: TypeAlias = str | os.PathLike | nn.Module | Runner | None


SCALES = (2, 3, 4)


# ----------------------------------------------------------------------------------------------
# Validation shared by the API and the command line: both refuse the same values, same words
# ----------------------------------------------------------------------------------------------

def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_scale(scale: Any, name: str = "scale") -> int | None:
    """2, 3 or 4, or None (the model's own; x4 for the bundled model). Anything else is refused
    rather than read as "no scale" (``scale=0`` once gave a x4 image)."""
    if scale is None or (_is_int(scale) and int(scale) in SCALES):
        return None if scale is None else int(scale)
    raise UsageError(f"{name} must be 2, 3 or 4, got {scale!r}")


def check_tile(tile: Any, name: str = "tile") -> int | str:
    """"auto" (from free memory), 0 (the whole image) or a tile size in LR pixels; the command
    line's text ("256") is read as a number."""
    if tile == "auto":
        return "auto"
    if isinstance(tile, str):
        try:
            tile = int(tile)
        except ValueError:
            pass
    if not _is_int(tile):
        raise UsageError(f"{name} takes auto, 0 or a number of pixels, got {tile!r}")
    if tile < 0:
        raise UsageError(f"{name} must not be negative, got {tile}")
    return int(tile)


def check_pad(pad: Any, name: str = "pad") -> int:
    """Context pixels around each tile: 0 or more (a negative pad would crop real pixels away)."""
    if not _is_int(pad) or pad < 0:
        raise UsageError(f"{name} must be a number of pixels >= 0, got {pad!r}")
    return int(pad)


def check_suffix(suffix: str, name: str = "suffix") -> str:
    """Text added to output file names (``_x4``): a path separator in it would put outputs outside
    the output folder (``--suffix /../../x`` wrote beside it, over whatever was there)."""
    if any(sep and sep in suffix for sep in ("/", os.sep, os.altsep)):
        raise UsageError(f"{name} {suffix!r}: is added to file names, so it cannot hold a path separator")
    return suffix


@functools.lru_cache(maxsize=8)
def _bundled(scale: int, device: str) -> nn.Module:
    """The bundled model of ``scale``, loaded once per device: ``reprfn.upscale(img)`` called again
    reuses it (and, through ``prepare``, its opened engines)."""
    return load_model(bundled_weights(scale), device=device)


@overload
def resolve_model(model: str | os.PathLike | None, scale: int | None, device: torch.device) -> SRModel: ...


@overload
def resolve_model(model: ModelLike, scale: int | None, device: torch.device) -> nn.Module | Runner: ...


def resolve_model(model: ModelLike, scale: int | None, device: torch.device) -> nn.Module | Runner:
    """The bundled model for ``scale`` (None), a checkpoint path, or a model or ``Runner`` (scale checked)."""
    scale = check_scale(scale)
    if model is None:
        return _bundled(scale or 4, str(device))
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, scale=scale, device=device)
    if scale is not None and describe(model).scale != scale:
        raise UsageError(f"the model upscales x{describe(model).scale}, but x{scale} was asked for")
    return model


def _max_value(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    raise TypeError(f"images must be uint8 or uint16, got {dtype}")


def _quantize(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.clip(np.rint(x * _max_value(dtype)), 0, _max_value(dtype)).astype(dtype)


def upscale_pixels(model: nn.Module | Runner, pixels: np.ndarray, *, tile: int | str = "auto", pad: int = DEFAULT_PAD,
                   device: torch.device | None = None, precision: Precision = "fp32", reserve: int = 0) -> np.ndarray:
    """SR of an HxW or HxWx3 uint8/uint16 array; same layout and dtype out (``runtime.run.run_pixels``:
    the output held once, non-finite outputs and requests larger than memory refused).

    ``model``: a ``Runner``, or a model run as it is on ``device`` (default: the CPU). A greyscale
    image is given to an RGB model on three equal channels and the output averaged back.
    """
    runner = as_runner(model, device or torch.device("cpu"), precision)
    if tile == "auto":
        held = pixels.nbytes * runner.info.scale ** 2 + reserve if runner.device.type == "cpu" else 0
        tile = auto_tile(pixels.shape[0], pixels.shape[1], runner.device, bytes_per_pixel=runner.bytes_per_pixel,
                         held=held)
    return run_pixels(runner, pixels, tile=int(tile), pad=pad, reserve=reserve)


def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """Alpha is not colour: MATLAB bicubic, clipped to the valid range; a band of rows at a time,
    so that no float64 copy of the whole output is ever held."""
    src = alpha.astype(np.float64) / _max_value(alpha.dtype)
    out = np.empty((output_length(alpha.shape[0], scale), output_length(alpha.shape[1], scale)), alpha.dtype)
    rows = max(1, (1 << 17) // out.shape[1])  # bands of about 1 MB in float64
    for y in range(0, out.shape[0], rows):
        out[y:y + rows] = _quantize(imresize_rows(src, scale, y, y + rows), alpha.dtype)
    return out


def upscale_picture(model: nn.Module | Runner, pic: Picture, *, reserve: int = 0, **kw: Any) -> Picture:
    """Colour through the model, alpha on its own; ``reserve``: bytes needed besides (the writer)."""
    scale = describe(model).scale
    alpha_bytes = 0 if pic.alpha is None else pic.alpha.nbytes * scale ** 2
    pixels = upscale_pixels(model, pic.pixels, reserve=reserve + alpha_bytes, **kw)
    alpha = upscale_alpha(pic.alpha, scale) if pic.alpha is not None else None
    return replace(pic, pixels=pixels, alpha=alpha)


def upscale(image: Any, scale: int | None = 4, model: ModelLike = None, tile: int | str = "auto",
            device: str | torch.device = "auto", precision: Precision = "auto", pad: int = DEFAULT_PAD,
            backend: Backend = "auto") -> Any:
    """Upscale a PIL image, a numpy array (HxW, HxWx1, HxWx3, HxWx4; uint8 or uint16) or a float
    tensor ((C, H, W) or (N, C, H, W) in [0, 1]) and return the same kind.

    ``model``: None for the bundled model of ``scale``, a checkpoint path, or a loaded model.
    ``tile``: "auto" (from free memory), 0 (whole image) or a tile size in LR pixels.
    ``backend``: "auto" (the fastest equal-output path: ``reprfn.runtime.prepare``), "torch"
    (the model as it is, eager PyTorch) or "onnxruntime" (CPU; tiles approximate).
    ``scale``, ``tile`` and ``pad`` are checked as the command line checks them (``check_scale``,
    ``check_tile``, ``check_pad``), before any model is loaded. A PIL image's EXIF orientation is
    applied, as for files: the result is upright and carries no orientation tag.
    """
    tile, pad = check_tile(tile), check_pad(pad)
    dev = resolve_device(device)
    net = prepare(resolve_model(model, scale, dev), dev, precision, backend)
    kw: dict[str, Any] = {"tile": tile, "pad": pad, "device": dev, "precision": precision}
    if isinstance(image, torch.Tensor):
        return _upscale_tensor(net, image, **kw)
    if isinstance(image, np.ndarray):
        return _upscale_array(net, image, **kw)
    from PIL import Image

    if isinstance(image, Image.Image):
        from .images import picture_from_pil, picture_to_pil

        return picture_to_pil(upscale_picture(net, picture_from_pil(image), **kw))
    raise TypeError(f"cannot upscale a {type(image).__name__}: give a PIL image, a numpy array or a tensor")


def _upscale_array(net: Runner, image: np.ndarray, **kw: Any) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] in (1, 2, 4):
        colour = image[..., 0] if image.shape[2] <= 2 else image[..., :3]
        alpha = image[..., -1] if image.shape[2] in (2, 4) else None
        pic = upscale_picture(net, Picture(colour, alpha, None, None, "array"), **kw)
        if image.shape[2] == 1:
            return pic.pixels[..., None]
        colour = pic.pixels[..., None] if pic.pixels.ndim == 2 else pic.pixels
        assert pic.alpha is not None  # the input has alpha, so has the output
        return np.concatenate([colour, pic.alpha[..., None]], axis=2)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3):
        return upscale_pixels(net, image, **kw)
    raise UsageError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")


def _upscale_tensor(net: Runner, image: torch.Tensor, **kw: Any) -> torch.Tensor:
    if not torch.is_floating_point(image) or image.dim() not in (3, 4):
        raise UsageError("tensors must be float (C, H, W) or (N, C, H, W) in [0, 1]")
    batch = image if image.dim() == 4 else image[None]
    tile = kw.pop("tile")
    if tile == "auto":
        tile = auto_tile(batch.shape[-2], batch.shape[-1], net.device, bytes_per_pixel=net.bytes_per_pixel)
    out = run(net, batch.detach().float().cpu(), tile=int(tile), pad=kw["pad"]).to(image.dtype)
    return out if image.dim() == 4 else out[0]


def upscale_file(model: nn.Module | Runner, src: str | os.PathLike, dst: str | os.PathLike, *,
                 max_pixels: int | None = None, quality: int = 95, overwrite: bool = False, **kw: Any) -> Path:
    """Read ``src``, upscale it, write ``dst`` atomically (no partial file, ever).

    Refused before any work: ``dst`` being ``src`` (as ``reprfn upscale`` refuses), an existing
    ``dst`` unless ``overwrite`` (as ``reprfn.upscale_video``; it is then replaced only once the
    new file is complete), a bad ``tile``, ``pad`` or ``device`` (as ``reprfn.upscale``).
    """
    from .images import DEFAULT_MAX_PIXELS

    refuse_collisions([(src, dst)])
    if Path(dst).exists() and not overwrite:
        raise UsageError(f"{dst}: exists; pass overwrite=True to replace it (once the new one is complete)")
    check_writable(dst, "image")  # a parent that is a file: said so, before the image is read
    if "tile" in kw:
        kw["tile"] = check_tile(kw["tile"])
    if "pad" in kw:
        kw["pad"] = check_pad(kw["pad"])
    if kw.get("device") is not None:  # "tpu", or cuda on a machine without: said so, as reprfn.upscale says it
        kw["device"] = resolve_device(kw["device"])
    pic = load_picture(src, max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels or None)
    height, width = (n * describe(model).scale for n in pic.pixels.shape[:2])
    writer = write_memory(dst, height, width, colour=1 if pic.pixels.ndim == 2 else 3,
                          alpha=pic.alpha is not None, dtype=pic.pixels.dtype)  # refuses what dst cannot hold
    try:
        out = upscale_picture(model, pic, reserve=writer, **kw)
    except MemoryError:
        raise ResourceError(f"{src}: out of memory upscaling it to {width}x{height}: use a smaller --tile "
                            "or --scale, or upscale the image in parts") from None
    except ReprfnError as exc:  # name the file: these messages are about the image, not a flag alone
        raise type(exc)(f"{src}: {exc}") from None
    return save_picture(out, dst, quality=quality)


# ----------------------------------------------------------------------------------------------
# Batches of files: what to read, where to write
# ----------------------------------------------------------------------------------------------

def collect_inputs(inputs: list[str], recursive: bool = False,
                   output: str | os.PathLike | None = None) -> tuple[list[Path], list[str]]:
    """Files, folders (their images and videos; ``recursive`` descends) and globs -> sorted unique files,
    plus one-line messages for inputs that match nothing.

    Hidden files and folders inside a folder are left out, as a shell's ``*`` and ``glob`` leave
    them: macOS's ``._photo.jpg`` companions are not images, and ``.git`` or ``.thumbnails`` are
    not what ``-i photos --recursive`` means. A hidden file named on its own is read. ``output``:
    the output folder; where it lies within a folder input (``-i photos -o photos/x2 --recursive``)
    the files under it are an earlier run's outputs, and are left out, so that running the command
    again does not upscale them again. Links to folders are not followed (a link loop would never end)."""
    files: list[Path] = []
    errors: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            earlier = _earlier_outputs(path, output)
            found = [p for p in path.glob(pattern)
                     if p.is_file() and p.suffix.lower() in (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES)
                     and not any(part.startswith(".") for part in p.relative_to(path).parts) and not earlier(p)]
            if not found:
                hint = "" if recursive else " (--recursive looks deeper)"
                errors.append(f"{path}: no images in this folder{hint}")
            files += found
        elif path.exists():
            files.append(path)
        else:
            root, globbed = _glob(item, recursive)
            earlier = _earlier_outputs(root, output)
            matches = [p for p in globbed if p.is_file() and not earlier(p)]
            if not matches:
                errors.append(f"{item}: no such file")
            files += matches
    unique = sorted({p.resolve(): p for p in files}.values(), key=lambda p: str(p))
    return unique, errors


def _earlier_outputs(root: Path, output: str | os.PathLike | None) -> Callable[[Path], bool]:
    """Whether a file found under ``root`` (a folder input, or a glob's fixed start) lies in the
    output folder ``output``, when that is a folder strictly inside ``root``: such files are
    an earlier run's outputs, not inputs. An output folder that is ``root`` itself leaves all in."""
    top = root.resolve()
    out = Path(output).resolve() if output is not None else None
    if out is None or out == top or not out.is_relative_to(top):
        return lambda path: False
    return lambda path: path.parent.resolve().is_relative_to(out)


def _glob(pattern: str, recursive: bool) -> tuple[Path, list[Path]]:
    """The fixed start of ``pattern`` (the folders before its first wildcard) and the paths it
    matches, as ``glob.glob`` finds them; but a recursive ``**`` is matched by pathlib, which does
    not follow links to folders: glob's does, and a link loop (``d/up -> ..``) makes it run until
    the path is too long, for ever in practice."""
    import glob

    parts = Path(pattern).parts
    magic = [i for i, part in enumerate(parts) if any(c in part for c in "*?[")] or [len(parts) - 1]
    root, rest = Path(*parts[:magic[0]]), parts[magic[0]:]
    if not (recursive and "**" in pattern):
        return root, [Path(p) for p in glob.glob(pattern, recursive=recursive)]
    dotted = any(part.startswith(".") for part in rest)  # a pattern that asks for hidden names gets them
    return root, [p for p in root.glob(str(Path(*rest)))
                  if dotted or not any(part.startswith(".") for part in p.relative_to(root).parts)]


def mirrored_folder(src: Path, inputs: Sequence[str]) -> Path:
    """The sub-folder the output of ``src`` goes to: its folder relative to the first folder input
    that holds it (``-i photos --recursive``: photos/x/img.png -> OUT/x/img.png), so that equal
    names in different sub-folders stay apart; "." for files given by name or by a glob."""
    for item in inputs:
        root = Path(item)
        if root.is_dir() and src.is_relative_to(root):
            return src.parent.relative_to(root)
    return Path()


def _image_extensions() -> set[str]:
    """Suffixes that name an image file: every format Pillow knows, and a few it may not."""
    from PIL import Image

    Image.init()
    return set(Image.registered_extensions()) | {".avif", ".heic", ".heif", ".jxl", ".svg"}


def file_output(output: str, *, single: bool, ext: str = "auto", video: bool = False) -> bool:
    """Whether ``-o`` names the output file (True) or a folder to write into (False, created).

    An existing folder, or a name ending in a separator, is a folder. A name with an image
    extension is a file: it must be one reprfn writes (.png .jpg .jpeg .webp .bmp .tif .tiff),
    the input must be one image file (``single``), and ``--ext`` (if given) must agree with it.
    Any other name (``out``, ``run.v2``) is a folder. So ``-o out.gif`` is refused instead of
    creating a folder called ``out.gif``. A video suffix names a video file (``video``: the one
    input is a video; ``video.paths.video_file_output``), and a video is never written as an image.
    """
    out = Path(output)
    suffix = out.suffix.lower()
    folder = out.is_dir() or output.endswith(("/", os.sep))
    if not folder and suffix in VIDEO_SUFFIXES:
        return video_file_output(output, single=single, video=video, ext=ext)
    if folder or suffix not in _image_extensions():
        return False
    if video:
        raise UsageError(f"-o {output}: the input is a video; name a .mp4, .mkv, .mov, .m4v or .webm file, "
                         "or a folder")
    if suffix not in IMAGE_SUFFIXES:
        raise UsageError(f"-o {output}: cannot write {suffix} images; name a .png, .jpg, .jpeg, .webp, "
                         ".bmp, .tif or .tiff file, or a folder")
    if not single:
        raise UsageError(f"-o {output} names one image file, but the input is a folder or several "
                         "images; name a folder")
    if ext != "auto" and {".jpeg": ".jpg", ".tiff": ".tif"}.get(suffix, suffix) != f".{ext.lower()}":
        raise UsageError(f"--ext {ext} contradicts -o {output}; drop one")
    return True


def output_path(src: Path, out: Path, *, single: bool, suffix: str, ext: str,
                folder: Path = Path()) -> Path:
    """Where the result of ``src`` goes: ``out`` itself when it names the file (``single``, see
    ``file_output``), else ``out/<folder>/<stem><suffix><ext>``; ``ext`` "auto" keeps the input's
    own suffix (format). A video keeps its container (``video.paths.video_output_path``)."""
    from .images import output_format

    if is_video(src):
        return video_output_path(src, out, single=single, suffix=suffix, folder=folder)
    if single and out.suffix.lower() in IMAGE_SUFFIXES:
        return out
    keep = ext == "auto" and src.suffix.lower() in IMAGE_SUFFIXES
    return out / folder / f"{src.stem}{suffix}{src.suffix.lower() if keep else output_format('PNG', ext)}"
