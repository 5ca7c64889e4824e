"""The ``reprfn`` command line. Every failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from . import __version__
from .checkpoint import describe, load_model, save_model
from .errors import ReprfnError, UsageError, one_line
from .evaluate import Bicubic, DatasetResult, evaluate_dataset, output_names
from .files import atomic_path, check_writable
from .models import build, names

EXIT_ERROR = 2


def _add_load_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", choices=names(), help="architecture, when the file cannot tell (RFN variants)")
    p.add_argument("--scale", "-s", type=int, choices=(2, 3, 4), help="expected scale (checked against the file)")
    p.add_argument("--data-range", type=float, help="native input range of the weights (default: from the file; 255 for RFDN files, else 1)")


def _load(args: argparse.Namespace):
    return load_model(args.weights, arch=args.arch, scale=args.scale, data_range=args.data_range)


def cmd_info(args: argparse.Namespace) -> int:
    if not Path(args.weights).exists() and args.weights in names():
        model = build(args.weights, scale=args.scale or 4, form=args.form)
        info = {"source": "architecture (random weights)", **describe(model)}
    else:
        model = _load(args)
        info = {"file": str(args.weights), **describe(model)}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            value = f"{value:,}" if key == "params" else value
            print(f"{key:<{width}}  {value}")
    return 0


@torch.no_grad()
def cmd_fuse(args: argparse.Namespace) -> int:
    model = _load(args)
    fused = model.fuse()
    x = torch.linspace(0, 1, 3 * 24 * 20).reshape(1, 3, 24, 20)[:, : model.in_channels]
    diff = (model.double()(x.double()) - fused.double()(x.double())).abs().max().item()
    out = save_model(fused.float(), args.output, extra=_metadata_args(args.meta, fused))
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in fused.parameters())
    print(f"{out}: {fused.arch} x{fused.scale} deploy form, {before:,} -> {after:,} params, "
          f"max |fused - train| = {diff:.2e} (float64 check)")
    return 0


def _metadata_args(items: list[str] | None, model: torch.nn.Module) -> dict[str, str]:
    """``--meta KEY=VALUE`` pairs (e.g. how a model was trained); the reserved keys stay the model's."""
    from .checkpoint import metadata_for

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
    from .train import load_config, train

    cfg = load_config(args.config, args.set or [])
    summary = train(cfg, args.out, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary["best_val_psnr_y"]
        print(f"{summary['run_dir']}: {summary['iterations']} iterations (from {summary['started_at']}), "
              f"last loss {summary['loss']:.5f}" + (f", best val Y-PSNR {best:.2f} dB" if best else "")
              + (f"; stopped at the {summary['stopped']} (--resume auto continues)" if "stopped" in summary else ""))
    return 0


def _device(name: str) -> torch.device:
    from .api import resolve_device

    return resolve_device(name)


def _eval_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model ``-w`` names, checked against ``-s``: a checkpoint, or the bicubic baseline."""
    if args.scale is None:
        raise UsageError("no scale: pass -s 2, 3 or 4")
    if args.weights is None:
        from .checkpoint import bundled_weights

        args.weights = str(bundled_weights(args.scale))
    if args.tile is not None and args.tile < 1:
        raise UsageError(f"--tile must be a positive number of LR pixels, got {args.tile}")
    if args.weights == "bicubic" and not Path(args.weights).exists():
        return Bicubic(args.scale)
    return _load(args).to(_device(args.device))


def _eval_table(results: list[DatasetResult]) -> str:
    width = max([len("dataset"), *(len(r.dataset) for r in results)])
    lines = [f"{'dataset':<{width}}  {'images':>6}  {'PSNR-Y':>7}  {'SSIM-Y':>6}  {'PSNR-RGB':>8}  {'time(s)':>7}"]
    for r in results:
        scores = (f"{r.mean('psnr_y'):>7.2f}  {r.mean('ssim_y'):>6.4f}  {r.mean('psnr_rgb'):>8.2f}"
                  if r.images else f"{'-':>7}  {'-':>6}  {'-':>8}")
        lines.append(f"{r.dataset:<{width}}  {len(r.images):>6}  {scores}  {r.seconds:>7.2f}")
    return "\n".join(lines)


def _eval_json(results: list[tuple[str, DatasetResult]]) -> dict:
    """The ``--json`` report, one entry per (weights, data set); data sets with no evaluated image
    are left out (their errors say why)."""
    return {"results": [
        {
            "dataset": r.dataset,
            "scale": r.scale,
            "weights": weights,
            "n_images": len(r.images),
            "psnr_y": r.mean("psnr_y"),
            "ssim_y": r.mean("ssim_y"),
            "psnr_rgb": r.mean("psnr_rgb"),
            "per_image": [{"name": i.name, "psnr_y": i.psnr_y, "ssim_y": i.ssim_y} for i in r.images],
        }
        for weights, r in results if r.images
    ]}


def _save_dir(args: argparse.Namespace, label: str, runs: int, save_name: str) -> Path:
    """``--save-dir`` of one data set: D/<dataset>, or D/<weights label>/<dataset> for several -w."""
    return Path(args.save_dir) / (label if runs > 1 else "") / save_name


def cmd_eval(args: argparse.Namespace) -> int:
    from .report import Collector, column_labels

    # outputs are checked and every -w is loaded first, so that a mistake fails before any long evaluation
    _check_outputs(args)
    runs = [argparse.Namespace(**{**vars(args), "weights": w}) for w in args.weights or [None]]
    models = [_eval_model(one) for one in runs]
    labels = column_labels([one.weights for one in runs])
    if args.save_dir:  # every file to save is planned before any image is evaluated
        from .evaluate import load_pairs, saved_file
        from .outputs import refuse_collisions

        refuse_collisions((pair.hr, saved_file(_save_dir(args, label, len(runs), name), pair))
                          for label in labels for folder, name in zip(args.dirs, output_names(args.dirs))
                          for pair in load_pairs(folder, args.scale)[0])
    collector = Collector() if args.report else None
    results: list[tuple[str, DatasetResult]] = []
    for one, model, label in zip(runs, models, labels):
        mine = []
        for folder, save_name in zip(args.dirs, output_names(args.dirs)):
            save_dir = _save_dir(args, label, len(runs), save_name) if args.save_dir else None
            result = evaluate_dataset(
                model, folder, args.scale, self_ensemble=args.self_ensemble, tile=args.tile,
                grey_as_rgb=args.grey_as_rgb, save_dir=save_dir,
                progress=lambda pairs, name=folder: tqdm(pairs, desc=name, unit="img", file=sys.stderr,
                                                         disable=None, leave=False),
                on_image=collector.hook(label, folder) if collector else None,
            )
            for error in result.errors:
                print(f"reprfn: error: {error}", file=sys.stderr)
            mine.append(result)
        if len(runs) > 1:
            print(("" if one is runs[0] else "\n") + f"weights: {one.weights}")
        print(_eval_table(mine))
        results += [(one.weights, r) for r in mine]
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(_eval_json(results), indent=2) + "\n")
    if args.report:
        from .report import ReportOptions, eval_report

        options = ReportOptions(args.scale, args.self_ensemble, args.tile, args.grey_as_rgb)
        out = eval_report(args.report, options, list(zip(labels, [one.weights for one in runs], models)),
                          results, collector)
        print(f"report: {out}", file=sys.stderr)
    return EXIT_ERROR if any(r.errors for _, r in results) else 0


def _upscale_model(args: argparse.Namespace, device: torch.device):
    from .api import prepare, resolve_model

    return prepare(resolve_model(args.weights, args.scale, device), device, args.precision, args.backend)


def _upscale_plan(args: argparse.Namespace, files: list[Path]) -> list[tuple[Path, Path]]:
    """(input, output) for every file of the batch, refused as a whole (``UsageError``) when ``-o``
    cannot be used, an output is an input, or two inputs share an output (``refuse_collisions``)."""
    from .api import file_output, mirrored_folder, output_path
    from .outputs import refuse_collisions

    single = len(files) == 1 and len(args.inputs) == 1 and not Path(args.inputs[0]).is_dir()
    as_file = bool(files) and file_output(args.output, single=single, ext=args.ext)
    plan = [(src, output_path(src, Path(args.output), single=as_file, suffix=args.suffix, ext=args.ext,
                              folder=mirrored_folder(src, args.inputs))) for src in files]
    refuse_collisions(plan)
    return plan


def cmd_upscale(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .api import check_pad, check_tile, collect_inputs, upscale_file

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = _device(args.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    files, errors = collect_inputs(args.inputs, args.recursive)
    try:  # on the full list, before sharding: every torchrun rank refuses the same batches
        tile, pad = check_tile(args.tile, "--tile"), check_pad(args.tile_pad, "--tile-pad")
        plan = _upscale_plan(args, files)[rank::world]  # torchrun: each rank takes every world-th file
    except UsageError:
        if rank:
            return EXIT_ERROR  # rank 0 says why
        raise
    out = Path(args.output)
    model = _upscale_model(args, device) if plan else None
    for message in errors if rank == 0 else []:
        print(f"reprfn: error: {message}", file=sys.stderr)
    bar = tqdm(plan, unit="img", disable=args.quiet or len(plan) < 2, file=sys.stderr)
    written = 0
    for src, dst in bar:
        try:
            if args.skip_existing and dst.exists():
                continue
            upscale_file(model, src, dst, max_pixels=args.max_pixels, tile=tile, pad=pad,
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
        print(f"{written} of {len(plan)} images upscaled x{model.scale} into {out}", file=sys.stderr)
    return EXIT_ERROR if errors else 0


def cmd_export(args: argparse.Namespace) -> int:
    from .api import resolve_model
    from .export import export_onnx, export_torchscript

    model = resolve_model(args.weights, args.scale, torch.device("cpu"))
    out = Path(args.output)
    if out.suffix.lower() in (".pt", ".ts", ".torchscript"):
        export_torchscript(model, out)
        print(f"{out}: TorchScript, {model.arch} x{model.scale}, fused")
        return 0
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"{out}: name the output .onnx (ONNX) or .pt / .ts (TorchScript)")
    report = export_onnx(model, out, opset=args.opset, fp16=args.fp16)
    print(report.summary())
    return 0


def _profile_target(args: argparse.Namespace):
    """The model ``reprfn profile`` measures: a registered name (random weights) or a checkpoint."""
    from .models import RepBlock, set_mode

    if not Path(args.model).exists() and args.model in names():
        model = build(args.model, scale=args.scale or 4, form=args.form)
    else:
        model = load_model(args.model, arch=args.arch, scale=args.scale, data_range=args.data_range)
    has_rep = any(isinstance(m, RepBlock) for m in model.modules()) or model.form == "deploy"
    if args.form == "deploy":
        return model.fuse() if model.form == "train" else model
    if has_rep and model.form == "deploy":
        raise UsageError(f"{args.model}: a deploy-form checkpoint has no training form (its branches are fused)")
    return set_mode(model, args.mode).eval()


def cmd_profile(args: argparse.Namespace) -> int:
    from .profile import format_report, parse_input, profile_model, to_json

    _at_least(args.runs, 1, "--runs")
    _at_least(args.warmup, 0, "--warmup")
    _check_outputs(args)
    device = _device(args.device)
    shape = parse_input(args.input)
    model = _profile_target(args)
    report = profile_model(model, shape, device=device, memory=not args.no_memory, timing=args.runtime,
                           runs=args.runs, warmup=args.warmup)
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

        from .serve import create_app, listen_socket, serve
    except ImportError as exc:
        raise UsageError(f"reprfn serve needs the 'serve' extra ({exc.name} is missing): "
                         "pip install 'reprfn[serve]'") from None
    device = _device(args.device)
    models = None
    if args.weights:  # loaded (fetched) before the server listens: a bad -w fails here, not on an upload
        from .api import resolve_model
        from .serve import Models

        chosen = resolve_model(args.weights, None, device)
        models = Models(device, loader=lambda s: chosen if s == chosen.scale else resolve_model(None, s, device))
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
    from .hub import MODELS, format_models, model_info

    infos = [model_info(entry) for entry in MODELS.values()]
    print(json.dumps(infos, indent=2) if args.json else format_models(infos))
    return 0


def _at_least(value: int, minimum: int, flag: str) -> None:
    if value < minimum:
        raise UsageError(f"{flag} must be at least {minimum}, got {value}")


def _check_outputs(args: argparse.Namespace) -> None:
    """``--json`` / ``--report`` targets that cannot be written are refused before the long work."""
    for flag in ("json", "report"):
        if getattr(args, flag, None):
            check_writable(getattr(args, flag), f"--{flag} file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reprfn", description="RepRFN super-resolution toolkit")
    parser.add_argument("--version", action="version", version=f"reprfn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="describe a checkpoint (or a registered architecture)")
    p.add_argument("weights", help=f"checkpoint file, or an architecture name ({', '.join(names())})")
    p.add_argument("--form", choices=("train", "deploy"), default=None, help="form, for an architecture name")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_load_flags(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("fuse", help="fold every RepBlock into one 3x3 conv and save the deploy form")
    p.add_argument("weights", metavar="IN", help="checkpoint in any supported layout")
    p.add_argument("output", metavar="OUT", help="output .safetensors file")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE",
                   help="extra metadata to store, e.g. --meta training='...' (repeatable)")
    _add_load_flags(p)
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser("eval", help="PSNR/SSIM on benchmark folders (see docs/evaluation.md)")
    p.add_argument("-w", "--weights", action="append",
                   help="checkpoint in any supported layout, a model name (reprfn models), or 'bicubic' "
                        "(default: the bundled model); "
                        "repeatable: each is evaluated and becomes a column of --report")
    p.add_argument("-d", "--dir", dest="dirs", action="append", required=True, metavar="DIR",
                   help="a folder with HR/ and LR/, or a folder of HR images; repeatable")
    p.add_argument("--self-ensemble", action="store_true", help="average the 8 flips/rotations (x8 time)")
    p.add_argument("--tile", type=int, metavar="N", help="process tiles of N LR pixels (approximate: ESA sees one tile)")
    p.add_argument("--grey-as-y", dest="grey_as_rgb", action="store_false",
                   help="measure greyscale images on themselves (MATLAB scripts) instead of as 3 equal "
                        "channels (the default, the convention of the published figures)")
    p.add_argument("--save-dir", metavar="D", help="save SR images as D/<dataset folder>/<name>.png")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--report", metavar="FILE.html",
                   help="write a self-contained HTML report: crops where the models differ, a "
                        "before/after slider, the scores, PSNR against params/MACs/CPU time")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto", help="default: cuda when available")
    _add_load_flags(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("upscale", help="upscale images with the bundled model (or -w WEIGHTS)")
    p.add_argument("-i", "--input", dest="inputs", nargs="+", required=True, metavar="INPUT",
                   help="image files, folders or globs")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (one image input; .png .jpg .jpeg .webp .bmp .tif .tiff) or folder (created)")
    p.add_argument("-s", "--scale", type=int, choices=(2, 3, 4), help="upscaling factor (default 4, or the model's)")
    p.add_argument("-w", "--weights", help="checkpoint in any supported layout or a model name (reprfn models; "
                                           "default: the bundled model)")
    p.add_argument("--tile", default="auto", help="auto (from free memory), 0 (whole image) or a tile size in LR pixels")
    p.add_argument("--tile-pad", type=int, default=48, metavar="P", help="context pixels around each tile (default 48)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime"), default="auto",
                   help="auto: the fastest path with equal outputs (CPU: ONNX Runtime for whole images when "
                        "installed, fused channels-last PyTorch kernels for tiles); "
                        "torch: the model in plain eager PyTorch; onnxruntime: ONNX Runtime on the CPU")
    p.add_argument("--suffix", default="", help="added to output file names, e.g. _x4")
    p.add_argument("--ext", choices=("auto", "png", "jpg", "webp"), default="auto", help="output format (auto: as the input)")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders of folder inputs, mirrored in OUT")
    p.add_argument("--skip-existing", action="store_true", help="leave outputs that already exist")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse inputs above N pixels (decompression-bomb guard; 0 lifts it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("export", help="export the fused model to ONNX (checked against PyTorch) or TorchScript")
    p.add_argument("-w", "--weights", help="checkpoint in any supported layout or a model name (reprfn models; "
                                           "default: the bundled model)")
    p.add_argument("-s", "--scale", type=int, choices=(2, 3, 4), help="scale of the bundled model (default 4)")
    p.add_argument("-o", "--output", required=True, help="model.onnx, or model.pt for TorchScript")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--fp16", action="store_true", help="float16 weights and compute, float32 input/output")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("train", help="train a model from folders of HR images (see configs/)")
    p.add_argument("-c", "--config", required=True, help="YAML config, e.g. configs/reprfn_x4.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (checkpoints, logs, weights)")
    p.add_argument("--resume", metavar="auto|PATH", help="continue from RUN_DIR/last.ckpt (auto) or a checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("profile", help="params, MACs, activations, convs (NTIRE counter), peak memory, runtime")
    p.add_argument("model", metavar="MODEL_NAME|WEIGHTS", help=f"an architecture ({', '.join(names())}) or a checkpoint")
    p.add_argument("--input", default="3x180x320", metavar="CxHxW", help="LR input size (default 3x180x320: 720p out at x4)")
    p.add_argument("--form", choices=("deploy", "train"), default="deploy",
                   help="deploy (RepBlocks fused into 3x3 convs; the default) or train (the training form)")
    p.add_argument("--mode", choices=("branches", "online"), default="branches",
                   help="RepBlocks of the training form: nine branches (the paper's) or online fusion")
    p.add_argument("--runtime", action="store_true", help="also time forwards (eager, and the default upscale path)")
    p.add_argument("--runs", type=int, default=10, help="timed runs for --runtime (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    _add_load_flags(p)
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("serve", help="a local web page (and HTTP API) that upscales images")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("-w", "--weights", help="checkpoint or model name (reprfn models) for its scale; "
                                           "the bundled models for the others")
    from .serve import MAX_PIXELS, MAX_QUEUE

    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, metavar="N",
                   help=f"largest input image, in pixels (default {MAX_PIXELS:,}); larger ones are answered 413")
    p.add_argument("--max-queue", type=int, default=MAX_QUEUE, metavar="N",
                   help=f"uploads that may wait while one is upscaled (default {MAX_QUEUE}); more are answered 503")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("models", help="the models known by name (-w NAME): bundled, or downloaded on request")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)
    return parser


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
        print(f"reprfn: internal error: {type(exc).__name__}: {exc} (set REPRFN_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return EXIT_ERROR


class Terminated(SystemExit):
    """SIGTERM, raised as an exception so that ``finally`` blocks run (no temporary file is left)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is not threading.main_thread():  # signals go to the main thread only
        return run(args.func, args)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args.func, args)
    except Terminated as exc:
        print("reprfn: terminated", file=sys.stderr)
        return int(exc.code)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":
    raise SystemExit(main())
