"""``reprfn eval``: every ``-w`` on every ``-d``, a table per model, and ``--json`` / ``--report``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..errors import UsageError
from ..evaluate import Bicubic, DatasetResult, Pair, evaluate_dataset, output_names
from ..files import atomic_path
from ..models import SRModel
from ..runtime.prepare import Runner, prepare
from .commands import check_outputs, device_from_name, model_from_args
from .status import EXIT_ERROR


def _eval_model(args: argparse.Namespace) -> SRModel | Bicubic | Runner:
    """The model ``-w`` names, checked against ``-s``: a checkpoint, or the bicubic baseline."""
    if args.scale is None:
        raise UsageError("no scale: pass -s 2, 3 or 4")
    if args.weights is None:
        from ..checkpoint import bundled_weights

        args.weights = str(bundled_weights(args.scale))
    if args.tile is not None and args.tile < 1:
        raise UsageError(f"--tile must be a positive number of LR pixels, got {args.tile}")
    if args.weights == "bicubic" and not Path(args.weights).exists():
        return Bicubic(args.scale)
    device = device_from_name(args.device)
    model = model_from_args(args).to(device)
    if args.precision == "fp32":
        return model
    return prepare(model, device, args.precision)  # what upscale runs in that precision, to measure its cost


def _eval_table(results: list[DatasetResult]) -> str:
    width = max([len("dataset"), *(len(r.dataset) for r in results)])
    lines = [f"{'dataset':<{width}}  {'images':>6}  {'PSNR-Y':>7}  {'SSIM-Y':>6}  {'PSNR-RGB':>8}  {'time(s)':>7}"]
    for r in results:
        scores = (f"{r.mean('psnr_y'):>7.2f}  {r.mean('ssim_y'):>6.4f}  {r.mean('psnr_rgb'):>8.2f}"
                  if r.images else f"{'-':>7}  {'-':>6}  {'-':>8}")
        lines.append(f"{r.dataset:<{width}}  {len(r.images):>6}  {scores}  {r.seconds:>7.2f}")
    return "\n".join(lines)


def _eval_json(results: list[tuple[str, DatasetResult]]) -> dict[str, list[dict[str, Any]]]:
    """The ``--json`` report, one entry per (weights, data set), each with the errors of its files:
    a data set scored on 2 of its 3 images must not read as complete. A data set with no evaluated
    image has ``null`` scores (JSON has no NaN), and its errors say why."""
    return {"results": [
        {
            "dataset": r.dataset,
            "scale": r.scale,
            "weights": weights,
            "n_images": len(r.images),
            "psnr_y": r.mean("psnr_y") if r.images else None,
            "ssim_y": r.mean("ssim_y") if r.images else None,
            "psnr_rgb": r.mean("psnr_rgb") if r.images else None,
            "per_image": [{"name": i.name, "psnr_y": i.psnr_y, "ssim_y": i.ssim_y} for i in r.images],
            "errors": list(r.errors),
        }
        for weights, r in results
    ]}


def _save_dir(args: argparse.Namespace, label: str, runs: int, save_name: str) -> Path:
    """``--save-dir`` of one data set: D/<dataset>, or D/<weights label>/<dataset> for several -w."""
    return Path(args.save_dir) / (label if runs > 1 else "") / save_name


def _progress(name: str) -> Callable[[Sequence[Pair]], Iterable[Pair]]:
    """The progress bar of one data set: on stderr, only on a terminal, gone when it is done."""

    def bar(pairs: Sequence[Pair]) -> Iterable[Pair]:
        return tqdm(pairs, desc=name, unit="img", file=sys.stderr, disable=None, leave=False)

    return bar


def cmd_eval(args: argparse.Namespace) -> int:
    from ..report import Collector, column_labels

    # outputs are checked and every -w is loaded first, so that a mistake fails before any long evaluation
    check_outputs(args)
    runs = [argparse.Namespace(**{**vars(args), "weights": w}) for w in args.weights or [None]]
    if args.report and args.precision != "fp32":
        raise UsageError("--report measures each model's own costs and outputs: use it with --precision fp32")
    models = [_eval_model(one) for one in runs]
    labels = column_labels([one.weights for one in runs])
    if args.save_dir:  # every file to save is planned before any image is evaluated
        from ..evaluate import load_pairs, saved_file
        from ..outputs import refuse_collisions

        refuse_collisions((pair.hr, saved_file(_save_dir(args, label, len(runs), name), pair))
                          for label in labels for folder, name in zip(args.dirs, output_names(args.dirs), strict=True)
                          for pair in load_pairs(folder, args.scale)[0])
    collector = Collector() if args.report else None
    results: list[tuple[str, DatasetResult]] = []
    for one, model, label in zip(runs, models, labels, strict=True):
        mine: list[DatasetResult] = []
        for folder, save_name in zip(args.dirs, output_names(args.dirs), strict=True):
            save_dir = _save_dir(args, label, len(runs), save_name) if args.save_dir else None
            result = evaluate_dataset(
                model, folder, args.scale, self_ensemble=args.self_ensemble, tile=args.tile,
                grey_as_rgb=args.grey_as_rgb, save_dir=save_dir,
                progress=_progress(folder),
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
    if collector is not None:  # --report
        from ..report import ReportOptions, eval_report

        options = ReportOptions(args.scale, args.self_ensemble, args.tile, args.grey_as_rgb)
        plain = [m for m in models if not isinstance(m, Runner)]  # all of them: fp32 with --report
        columns = list(zip(labels, [one.weights for one in runs], plain, strict=True))
        out = eval_report(args.report, options, columns, results, collector)
        print(f"report: {out}", file=sys.stderr)
    return EXIT_ERROR if any(r.errors for _, r in results) else 0
