"""``reprfn eval --report FILE.html``: one self-contained HTML page that shows the difference.

* ``run``: what a run gives the report (columns, pictures, results);
* ``costs``: parameters, MACs and CPU time of each model;
* ``crops``: where the models differ, and the crops and region shown there;
* ``svg``: the plots of PSNR against a cost;
* ``html``: the page, and its atomic write.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..evaluate import Bicubic, DatasetResult
from ..models import SRModel
from .costs import MAC_COUNTER, MAC_OUTPUT, TIME_LR, describe_columns
from .crops import CROP_HR, N_CROPS, REGION_HR, choose_crops, difference_map, region_around
from .html import render, write_report
from .run import MAX_IMAGES, Collector, Column, Run, Sample, column_labels, display_names
from .svg import svg_plot

__all__ = [
    "CROP_HR", "MAC_COUNTER", "MAC_OUTPUT", "MAX_IMAGES", "N_CROPS", "REGION_HR", "TIME_LR", "Collector",
    "Column", "ReportOptions", "Run", "Sample", "choose_crops", "column_labels",
    "describe_columns", "difference_map", "display_names", "eval_report", "region_around", "render",
    "svg_plot", "write_report",
]


@dataclass(frozen=True)
class ReportOptions:
    """The evaluation settings a report states in its notes (those of ``reprfn eval``)."""

    scale: int
    self_ensemble: bool = False
    tile: int | None = None  # LR pixels; None: whole images
    grey_as_rgb: bool = True  # greyscale measured as three equal channels (the published convention)


def eval_report(path: str | os.PathLike, options: ReportOptions,
                models: Sequence[tuple[str, str, SRModel | Bicubic]],
                results: Sequence[tuple[str, DatasetResult]], collector: Collector) -> Path:
    """The report of a ``reprfn eval`` run: ``models`` are (label, weights, model) in ``-w`` order,
    ``results`` (weights, result) pairs in the same order, one per ``-d`` for each model."""
    columns = describe_columns(models, options.scale)
    per_model = len(results) // len(models)  # results come model by model, one per -d each
    labelled = [(models[i // per_model][0], r) for i, (_, r) in enumerate(results)]
    dirs = list(dict.fromkeys(r.dataset for _, r in results))
    notes = []
    if options.self_ensemble:
        notes.append("Self-ensemble: each output is the mean of the 8 flips/rotations.")
    if options.tile:
        notes.append(f"Tiles of {options.tile} LR pixels (approximate for models with ESA).")
    notes.append("Greyscale images measured on themselves (--grey-as-y)." if not options.grey_as_rgb else
                 "Greyscale images measured as three equal channels (the published convention).")
    for label, result in labelled:
        notes += [f"{label}: {e}" for e in result.errors]
    run = Run(options.scale, columns, labelled, list(collector.samples.values()),
              dict(zip(dirs, display_names(dirs), strict=True)), notes)
    return write_report(path, run)
