"""What a run gives the report: the evaluated columns (models), the pictures of the first images
of each data set, and the results, gathered in a ``Run``."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..evaluate import DatasetResult, Pair

MAX_IMAGES = 16  # images per data set shown with pictures (all are in the tables)


@dataclass
class Column:
    """One evaluated model (one ``-w``): its label and what it costs."""

    label: str
    weights: str
    arch: str
    params: int | None = None  # None: not a network (bicubic)
    macs: int | None = None
    cpu_ms: float | None = None
    mac_counter: str = ""

    @property
    def is_bicubic(self) -> bool:
        return self.arch == "bicubic"


@dataclass
class Sample:
    """The pictures of one test image: HR, LR and each column's SR output (uint8)."""

    dataset: str
    name: str
    hr: np.ndarray
    lr: np.ndarray
    sr: dict[str, np.ndarray] = field(default_factory=dict)


class Collector:
    """Keeps the pictures of the first ``max_images`` images of each data set, for every column.

    ``hook(label, dataset)`` is the ``on_image`` callback of ``evaluate_dataset``.
    """

    def __init__(self, max_images: int = MAX_IMAGES) -> None:
        self.max_images = max_images
        self.samples: dict[tuple[str, str], Sample] = {}
        self._seen: dict[tuple[str, str], int] = {}

    def hook(self, label: str, dataset: str) -> Callable[[Pair, np.ndarray, np.ndarray, np.ndarray], None]:
        def on_image(pair: Pair, hr: np.ndarray, lr: np.ndarray, sr: np.ndarray) -> None:
            count = self._seen.get((label, dataset), 0)
            self._seen[(label, dataset)] = count + 1
            if count >= self.max_images:
                return
            sample = self.samples.setdefault((dataset, pair.name), Sample(dataset, pair.name, hr, lr))
            sample.sr[label] = sr

        return on_image


def column_labels(weights: Sequence[str]) -> list[str]:
    """Short unique labels: ``bicubic``, else the file stem, with parent folders where stems repeat."""
    parts = [Path(w).with_suffix("").parts if w != "bicubic" else ("bicubic",) for w in weights]
    depth = [1] * len(parts)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        clashing = [i for i, lab in enumerate(labels) if labels.count(lab) > 1 and depth[i] < len(parts[i])]
        if not clashing:
            break
        for i in clashing:
            depth[i] += 1
    if len(set(labels)) == len(labels):
        return labels
    return [f"{lab} ({i + 1})" for i, lab in enumerate(labels)]


def display_names(dirs: Sequence[str]) -> list[str]:
    """Data set names for people: ``Set5/x4`` rather than ``x4``, ``B100/HR`` rather than ``HR``."""
    from ..evaluate import output_names

    names = output_names(dirs)
    out = []
    for d, name in zip(dirs, names, strict=True):
        parts = Path(os.path.abspath(d)).parts
        generic = re.fullmatch(r"(x\d+|HR|LR|hr|lr|test|val)", Path(name).name) is not None
        out.append(str(Path(*parts[-2:])) if generic and len(Path(name).parts) < 2 and len(parts) >= 2 else name)
    return out


@dataclass
class Run:
    """Everything the report shows: columns, results per (column label, data set), pictures."""

    scale: int
    columns: list[Column]
    results: list[tuple[str, DatasetResult]]  # (column label, result)
    samples: list[Sample]
    dataset_names: dict[str, str]  # data set as given -> short display name
    notes: list[str] = field(default_factory=list)

    def result(self, label: str, dataset: str) -> DatasetResult | None:
        """The result of column ``label`` on ``dataset``, if it was evaluated there."""
        return next((r for lab, r in self.results if lab == label and r.dataset == dataset), None)

    def datasets(self) -> list[str]:
        """The data sets in the order they were evaluated."""
        return list(dict.fromkeys(r.dataset for _, r in self.results))
