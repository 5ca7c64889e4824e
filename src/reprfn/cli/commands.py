"""The ``reprfn`` subcommands but ``eval`` (``evaluation.py``): each takes the parsed flags and
returns the exit status; a failure the user can fix raises a ``ReprfnError`` (``status.run``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoint import describe, load_model, save_model
from ..errors import ReprfnError, UsageError
from ..files import atomic_path, check_output_dir, check_writable
from ..models import SRModel, build, names
from .status import EXIT_ERROR, user_line

if TYPE_CHECKING:
    from ..runtime.prepare import Runner


def model_from_args(args: argparse.Namespace) -> SRModel:
    """The checkpoint ``args.weights`` names, loaded with its --arch, --scale and --data-range."""
    return load_model(args.weights, arch=args.arch, scale=args.scale, data_range=args.data_range)


def cmd_info(args: argparse.Namespace) -> int:
    if not Path(args.weights).exists() and args.weights in names():
        model = build(args.weights, scale=args.scale or 4, form=args.form)
        info = {"source": "architecture (random weights)", **describe(model)}
    else:
        model = model_from_args(args)
        info = {"file": str(args.weights), **describe(model)}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            value = f"{value:,}" if key == "params" else value
            print(f"{key:<{width}}  {value}")
    return 0


def refuse_overwriting_weights(weights: str | None, outputs: list[Path]) -> None:
    """Refuse outputs that are the weights file read (``fuse IN IN``, ``export -w m.pt -o m.pt``,
    ncnn's ``NAME.bin`` over a ``pytorch_model.bin``): the write would replace the checkpoint,
    training form and metadata included, with what was made from it. A model name is no file."""
    if weights is not None and Path(weights).is_file():
        from ..outputs import refuse_collisions

        refuse_collisions([(weights, out) for out in outputs])


@torch.no_grad()
def cmd_fuse(args: argparse.Namespace) -> int:
    refuse_overwriting_weights(args.weights, [Path(args.output)])
    check_writable(args.output, "fused checkpoint")
    model = model_from_args(args)
    fused = model.fuse()
    x = torch.linspace(0, 1, 3 * 24 * 20).reshape(1, 3, 24, 20)[:, : model.in_channels]
    diff = (model.double()(x.double()) - fused.double()(x.double())).abs().max().item()
    out = save_model(fused.float(), args.output, extra=_metadata_args(args.meta, fused))
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in fused.parameters())
    print(f"{out}: {fused.arch} x{fused.scale} deploy form, {before:,} -> {after:,} params, "
          f"max |fused - train| = {diff:.2e} (float64 check)")
    return 0


def _metadata_args(items: list[str] | None, model: SRModel) -> dict[str, str]:
    """``--meta KEY=VALUE`` pairs (e.g. how a model was trained); the reserved keys stay the model's."""
    from ..checkpoint import metadata_for

    reserved = set(metadata_for(model))
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--meta {item!r}: expected KEY=VALUE")
        if key in reserved:
            raise UsageError(f"--meta {key}: reserved (set from the model itself)")
        out[key] = value
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from ..train import load_config, train

    if not args.out.strip():  # Path("") is the current folder: a run spread among the files there
        raise UsageError("--out is empty: name the run folder")
    cfg = load_config(args.config, args.set or [])
    summary = train(cfg, args.out, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary["best_val_psnr_y"]
        print(f"{summary['run_dir']}: {summary['iterations']} iterations (from {summary['started_at']}), "
              f"last loss {summary['loss']:.5f}" + (f", best val Y-PSNR {best:.2f} dB" if best else "")
              + (f"; stopped at the {summary['stopped']} (--resume auto continues)" if "stopped" in summary else ""))
    return 0


def device_from_name(name: str) -> torch.device:
    """``--device``: auto, cpu or cuda (``api.resolve_device``, imported when a command needs it)."""
    from ..api import resolve_device

    return resolve_device(name)


def _upscale_model(args: argparse.Namespace, device: torch.device) -> Runner:
    from ..api import prepare, resolve_model

    return prepare(resolve_model(args.weights, args.scale, device), device, args.precision, args.backend)


def _upscale_plan(args: argparse.Namespace, files: list[Path]) -> list[tuple[Path, Path]]:
    """(input, output) for every file of the batch, refused as a whole (``UsageError``) when ``-o``
    cannot be used, an output is an input, or two inputs share an output (``refuse_collisions``)."""
    from ..api import file_output, is_video, mirrored_folder, output_path
    from ..outputs import refuse_collisions

    single = len(files) == 1 and len(args.inputs) == 1 and not Path(args.inputs[0]).is_dir()
    as_file = bool(files) and file_output(args.output, single=single, ext=args.ext,
                                          video=single and is_video(files[0]))
    plan = [(src, output_path(src, Path(args.output), single=as_file, suffix=args.suffix, ext=args.ext,
                              folder=mirrored_folder(src, args.inputs))) for src in files]
    if files and not as_file:  # a file in the way failed each output alone, after the model had loaded
        check_output_dir(args.output, "-o folder")
    refuse_collisions(plan)
    return plan


def cmd_upscale(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..api import check_pad, check_suffix, check_tile, collect_inputs, is_video, upscale_file
    from ..video import check_crf, check_encoder, upscale_video

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = device_from_name(args.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    files, errors = collect_inputs(args.inputs, args.recursive, output=args.output)
    try:  # on the full list, before sharding: every torchrun rank refuses the same batches
        tile, pad = check_tile(args.tile, "--tile"), check_pad(args.tile_pad, "--tile-pad")
        check_suffix(args.suffix, "--suffix")
        if any(is_video(src) for src in files):
            check_crf(args.crf, "--crf", codec=args.codec)
            check_encoder(args.codec)
        plan = _upscale_plan(args, files)[rank::world]  # torchrun: each rank takes every world-th file
    except UsageError:
        if rank:
            return EXIT_ERROR  # rank 0 says why
        raise
    out = Path(args.output)
    model = _upscale_model(args, device) if plan else None
    for message in errors if rank == 0 else []:
        print(f"reprfn: error: {message}", file=sys.stderr)
    if model is None:  # nothing to upscale (on this rank)
        return EXIT_ERROR if errors else 0
    bar = tqdm(plan, unit="img", disable=args.quiet or len(plan) < 2, file=sys.stderr)
    written = 0
    for src, dst in bar:
        try:
            if args.skip_existing and dst.exists():
                continue
            if is_video(src):  # the rule of images: -o names what to write, --skip-existing keeps it
                upscale_video(src, dst, None, model, tile=tile, pad=pad, device=device, precision=args.precision,
                              crf=args.crf, codec=args.codec, progress=not args.quiet, overwrite=True,
                              max_pixels=args.max_pixels)
            else:
                upscale_file(model, src, dst, max_pixels=args.max_pixels, tile=tile, pad=pad, overwrite=True,
                             device=device, precision=args.precision)
            written += 1
            if not args.quiet and len(plan) == 1:
                print(dst)
        except Exception as exc:  # the batch goes on with its other files
            if os.environ.get("REPRFN_DEBUG") and not isinstance(exc, (ReprfnError, OSError)):
                raise
            line = user_line(exc)
            errors.append(line)
            tqdm.write(f"reprfn: error: {line if str(src) in line else f'{src}: {line}'}", file=sys.stderr)
    if not args.quiet and len(plan) > 1:
        kind = "images" if not any(is_video(src) for src, _ in plan) else "files"
        print(f"{written} of {len(plan)} {kind} upscaled x{model.info.scale} into {out}", file=sys.stderr)
    return EXIT_ERROR if errors else 0


EXPORT_SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript",
                   ".param": "ncnn"}


def export_format(out: Path, requested: str = "auto") -> str:
    """The format ``reprfn export`` writes: ``--format``, else the suffix of ``-o``; the two must agree
    (ncnn also takes a bare NAME: it writes NAME.param + NAME.bin)."""
    guessed = EXPORT_SUFFIXES.get(out.suffix.lower())
    if requested == "auto":
        if guessed is None:
            raise UsageError(f"{out}: name the output .onnx (ONNX), .pt / .ts (TorchScript) or .param (ncnn)")
        return guessed
    if guessed != requested and not (requested == "ncnn" and guessed is None):
        wanted = {"onnx": "NAME.onnx", "torchscript": "NAME.pt or NAME.ts", "ncnn": "NAME or NAME.param"}[requested]
        raise UsageError(f"{out}: --format {requested} writes {wanted}")
    return requested


def cmd_export(args: argparse.Namespace) -> int:
    from ..api import resolve_model
    from ..export import export_onnx, export_torchscript
    from ..runtime.onnx import DEFAULT_OPSET

    out = Path(args.output)
    fmt = export_format(out, args.format)
    _export_flags(fmt, args)
    if fmt == "ncnn":
        from ..export_ncnn import ncnn_paths

        outputs = list(ncnn_paths(args.output))
    else:
        outputs = [out]
    refuse_overwriting_weights(args.weights, outputs)
    for path in outputs:  # a folder in the way was found only once the export and its check had run
        check_writable(path, "export")
    model = resolve_model(args.weights, args.scale, torch.device("cpu"))
    if fmt == "ncnn":
        from ..export_ncnn import export_ncnn

        print(export_ncnn(model, args.output, fp16=args.fp16).summary())  # the text: a trailing / is a folder
        return 0
    if fmt == "torchscript":
        export_torchscript(model, out)
        print(f"{out}: TorchScript, {model.arch} x{model.scale}, fused")
        return 0
    report = export_onnx(model, out, opset=DEFAULT_OPSET if args.opset is None else args.opset, fp16=args.fp16)
    print(report.summary())
    return 0


def _export_flags(fmt: str, args: argparse.Namespace) -> None:
    """Refuse a flag the chosen format does not use: ``-o m.pt --fp16`` wrote a float32 TorchScript
    file with exit 0, and ``--opset`` was dropped without a word for TorchScript and ncnn."""
    if args.opset is not None and fmt != "onnx":
        raise UsageError(f"{args.output}: --opset applies to ONNX only, and this writes {fmt}; drop --opset")
    if args.fp16 and fmt == "torchscript":
        raise UsageError(f"{args.output}: TorchScript export is float32 only; drop --fp16, or write .onnx or ncnn")


def _profile_target(args: argparse.Namespace) -> SRModel:
    """The model ``reprfn profile`` measures: a registered name (random weights) or a checkpoint."""
    from ..models import RepBlock, set_mode

    if not Path(args.model).exists() and args.model in names():
        model = build(args.model, scale=args.scale or 4, form=args.form)
    else:
        model = load_model(args.model, arch=args.arch, scale=args.scale, data_range=args.data_range)
    has_rep = any(isinstance(m, RepBlock) for m in model.modules()) or model.form == "deploy"
    if args.form == "deploy":
        return model.fuse() if model.form == "train" else model
    if has_rep and model.form == "deploy":
        raise UsageError(f"{args.model}: a deploy-form checkpoint has no training form (its branches are fused)")
    return set_mode(model, args.mode or "branches").eval()


def _profile_flags(args: argparse.Namespace) -> None:
    """Refuse a flag this profile would not use: ``--precision bf16`` without ``--runtime`` printed
    fp32 counts alone, and ``--mode online`` of the deploy form profiled the fused model, each
    with exit 0, read as a measurement of what was asked."""
    if not args.runtime:
        given = [flag for flag, value in (("--runs", args.runs), ("--warmup", args.warmup)) if value is not None]
        given += ["--precision"] if args.precision != "fp32" else []
        if given:
            raise UsageError(f"{given[0]} applies to the timing, which only --runtime measures; add --runtime")
    if args.mode is not None and args.form == "deploy":
        raise UsageError("--mode applies to the training form's RepBlocks: add --form train, or drop --mode")


def cmd_profile(args: argparse.Namespace) -> int:
    from ..profile import format_report, parse_input, profile_model, to_json

    _profile_flags(args)
    args.runs = 10 if args.runs is None else _at_least(args.runs, 1, "--runs")
    args.warmup = 2 if args.warmup is None else _at_least(args.warmup, 0, "--warmup")
    check_outputs(args)
    device = device_from_name(args.device)
    shape = parse_input(args.input)
    model = _profile_target(args)
    report = profile_model(model, shape, device=device, memory=not args.no_memory, timing=args.runtime,
                           runs=args.runs, warmup=args.warmup, precision=args.precision)
    report["source"] = args.model
    print(format_report(report))
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(to_json(report) + "\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import python_multipart  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401

        from ..serve import create_app, listen_socket, serve
    except ImportError as exc:
        raise UsageError(f"reprfn serve needs the 'serve' extra ({exc.name} is missing): "
                         "pip install 'reprfn[serve]'") from None
    device = device_from_name(args.device)
    from ..serve import Models

    models = Models(device, precision=args.precision)
    if args.weights:  # loaded (fetched) before the server listens: a bad -w fails here, not on an upload
        from ..api import resolve_model

        chosen = resolve_model(args.weights, None, device)
        models = Models(device, loader=lambda s: chosen if s == chosen.scale else resolve_model(None, s, device),
                        precision=args.precision)
    app = create_app(device=device, max_pixels=args.max_pixels, max_queue=args.max_queue, models=models)
    sock = listen_socket(args.host, args.port)  # a port in use fails here, before "serving on"
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"reprfn: warning: listening on {args.host}: other machines can use this server", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"reprfn: serving on http://{host}:{args.port}/ (Ctrl+C stops)", file=sys.stderr)
    serve(app, sock)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The known models by name (``hub.MODELS``): nothing is downloaded to list them."""
    from ..hub import MODELS, format_models, model_info

    infos = [model_info(entry) for entry in MODELS.values()]
    print(json.dumps(infos, indent=2) if args.json else format_models(infos))
    return 0


def _at_least(value: int, minimum: int, flag: str) -> int:
    if value < minimum:
        raise UsageError(f"{flag} must be at least {minimum}, got {value}")
    return value


def check_outputs(args: argparse.Namespace) -> None:
    """``--json`` / ``--report`` targets that cannot be written are refused before the long work."""
    for flag in ("json", "report"):
        if getattr(args, flag, None):
            check_writable(getattr(args, flag), f"--{flag} file")
    if getattr(args, "save_dir", None):
        check_output_dir(args.save_dir, "--save-dir folder")

