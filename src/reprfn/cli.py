"""The ``reprfn`` command line. Every failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import __version__
from .checkpoint import CheckpointError, describe, load_model, save_model
from .models import build, names

EXIT_ERROR = 2


class UsageError(ValueError):
    """A bad argument or input that the user can fix; printed as one line."""


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
    out = save_model(fused.float(), args.output)
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in fused.parameters())
    print(f"{out}: {fused.arch} x{fused.scale} deploy form, {before:,} -> {after:,} params, "
          f"max |fused - train| = {diff:.2e} (float64 check)")
    return 0


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
    _add_load_flags(p)
    p.set_defaults(func=cmd_fuse)
    return parser


def run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call a command; turn expected failures into one line on stderr."""
    try:
        return func(args)
    except (CheckpointError, UsageError, ValueError, OSError) as exc:
        print(f"reprfn: error: {exc}", file=sys.stderr)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.func, args)


if __name__ == "__main__":
    raise SystemExit(main())
