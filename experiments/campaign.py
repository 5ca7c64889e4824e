"""The long x4 training campaign on the CPU: keep it recoverable from the repository.

A run folder (``runs/...``) may not survive a change of machine. After a stage improves, its EMA
weights in *training* form (all nine branches per RepBlock, float32, ~5 MB) are written to
``campaign/x4/ema_train.safetensors`` and committed; the next stage starts from them with
``--set model.init=campaign/x4/ema_train.safetensors`` (a fresh optimizer: acceptable after a
machine change). The package never ships this folder.

    python experiments/campaign.py snapshot runs/x4campaign [--out campaign/x4/ema_train.safetensors]
    python experiments/campaign.py curve runs/x4campaign [runs/other ...]   # Set5 validation rows
    python experiments/campaign.py curve runs/x4campaign runs/x4c2 --offset x4c2=8250 --plot docs/campaign.png
        # ... and their curve against the campaign's iterations (a stage started from an earlier
        # stage's snapshot at iteration N is drawn from N on)
    python experiments/campaign.py soup START.safetensors STAGE.safetensors --alpha 0.5 --out SOUP.safetensors
        # the weights (1 - alpha) * START + alpha * STAGE: a stage that gained on some sets and
        # lost on one can land between, better on all (measure it with `reprfn eval`)
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from reprfn.checkpoint import load_model, save_model
from reprfn.config import parse_config
from reprfn.train import build_model

DEFAULT_OUT = Path("campaign/x4/ema_train.safetensors")


def snapshot(run_dir: Path, out: Path) -> Path:
    """The EMA (or, without EMA, the model) of ``run_dir/last.ckpt`` in training form."""
    state = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)
    raw = dict(state["config"])
    raw["model"] = {**raw["model"], "init": None}  # the weights come from the checkpoint itself
    model = build_model(parse_config(raw))
    model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_model(model, out, extra={"iteration": state["iteration"], "run": run_dir.name,
                                         "best_val_psnr_y": f"{state.get('best', float('nan')):.4f}"})


def curve(run_dirs: list[Path]) -> list[tuple[str, int, float]]:
    """(run, iteration, Set5 Y-PSNR) for every validation row of the runs' ``log.csv``."""
    rows = []
    for run in run_dirs:
        with open(run / "log.csv", newline="") as fh:
            rows += [(run.name, int(r["iteration"]), float(r["val_psnr_y"]))
                     for r in csv.DictReader(fh) if r["val_psnr_y"]]
    return rows


def series(rows: list[tuple[str, int, float]], offsets: dict[str, int]) -> dict[str, list[tuple[int, float]]]:
    """run -> [(campaign iteration, Set5 Y-PSNR)]: a run's own iterations plus ``offsets[run]``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for run, iteration, value in rows:
        out.setdefault(run, []).append((offsets.get(run, 0) + iteration, value))
    return out


def plot(rows: list[tuple[str, int, float]], offsets: dict[str, int], out: Path) -> Path:
    """Set5 validation of each run against the campaign's iterations (``series``), as a PNG for
    docs/training.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    for run, points in series(rows, offsets).items():
        ax.plot(*zip(*points, strict=True), marker=".", label=run)
    ax.set_xlabel("iteration of the campaign (batch 16)")
    ax.set_ylabel("Set5 x4 Y-PSNR (dB), EMA")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def interpolate(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor],
                alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * start + alpha * end``, weight by weight ("model soup", WiSE-FT): two points
    of one fine-tuning path (a model and a later stage trained from it) share their basin, so the
    line between them stays good and may be better than either end on sets where they differ.
    Exact at the ends; both must hold the same weights with the same shapes."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    if start.keys() != end.keys() or any(start[k].shape != end[k].shape for k in start):
        raise ValueError("the two models do not hold the same weights (architecture, scale or form differ)")
    return {k: start[k] if alpha == 0 else end[k] if alpha == 1 else torch.lerp(start[k], end[k], alpha)
            for k in start}


def soup(start: Path, end: Path, alpha: float, out: Path, meta: dict[str, str] | None = None) -> Path:
    """``interpolate`` two weight files of one architecture, scale and form into ``out`` (with
    ``meta`` added to its metadata: what a bundled model says it saw)."""
    a, b = load_model(start), load_model(end)
    if (a.config(), a.form) != (b.config(), b.form):
        raise ValueError(f"{start} and {end} differ: {a.config()} {a.form} vs {b.config()} {b.form}")
    a.load_state_dict(interpolate(a.state_dict(), b.state_dict(), alpha))
    return save_model(a, out, extra={"soup": f"{1 - alpha:g} x {start.name} + {alpha:g} x {end.name}", **(meta or {})})


def _offset(text: str) -> tuple[str, int]:
    name, _, value = text.partition("=")
    return name, int(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("snapshot")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p = sub.add_parser("curve")
    p.add_argument("run_dirs", type=Path, nargs="+")
    p.add_argument("--offset", type=_offset, action="append", default=[], metavar="RUN=ITERATION",
                   help="a stage that started from another stage's snapshot at that iteration")
    p.add_argument("--plot", type=Path, metavar="PNG", help="also draw the curves")
    p = sub.add_parser("soup")
    p.add_argument("start", type=Path)
    p.add_argument("end", type=Path)
    p.add_argument("--alpha", type=float, default=0.5, help="weight of END (0: START, 1: END)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata to add")
    args = ap.parse_args()
    if args.command == "snapshot":
        print(snapshot(args.run_dir, args.out))
    elif args.command == "soup":
        print(soup(args.start, args.end, args.alpha, args.out, dict(m.split("=", 1) for m in args.meta)))
    else:
        rows = curve(args.run_dirs)
        for run, iteration, value in rows:
            print(f"{run}\t{iteration}\t{value:.3f}")
        if args.plot:
            print(plot(rows, dict(args.offset), args.plot))


if __name__ == "__main__":
    main()
