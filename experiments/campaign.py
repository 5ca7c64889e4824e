"""The long x4 training campaign on the CPU: keep it recoverable from the repository.

A run folder (``runs/...``) may not survive a change of machine. After a stage improves, its EMA
weights in *training* form (all nine branches per RepBlock, float32, ~5 MB) are written to
``campaign/x4/ema_train.safetensors`` and committed; the next stage starts from them with
``--set model.init=campaign/x4/ema_train.safetensors`` (a fresh optimizer: acceptable after a
machine change). The package never ships this folder.

    python experiments/campaign.py snapshot runs/x4campaign [--out campaign/x4/ema_train.safetensors]
    python experiments/campaign.py curve runs/x4campaign [runs/other ...]   # Set5 validation rows
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from reprfn.checkpoint import save_model
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("snapshot")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p = sub.add_parser("curve")
    p.add_argument("run_dirs", type=Path, nargs="+")
    args = ap.parse_args()
    if args.command == "snapshot":
        print(snapshot(args.run_dir, args.out))
    else:
        for run, iteration, value in curve(args.run_dirs):
            print(f"{run}\t{iteration}\t{value:.3f}")


if __name__ == "__main__":
    main()
