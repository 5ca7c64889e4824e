"""Tables and plots of docs/experiments.md, made from experiments/results.json only.

The generated parts sit between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` markers; the
text around them (the discussion) is written by hand and kept. Plots need matplotlib
(``pip install -e ".[experiments]"``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

LABELS = {
    "rfn-plain": "RFN, plain (no residual)",
    "rfn-rfb1": "RFN-RFB1 (local residuals)",
    "rfn-rfb2": "RFN-RFB2 (block residual)",
    "rfn-rfb3": "RFN-RFB3 (both)",
    "rfdn": "RFDN (distillation), 48 ch",
    "reprfn": "RepRFN",
    "reprfn-1x1": "RepRFN + RFDB's 1x1 convs",
    "reprfn-esafull": "RepRFN + RFDN's full ESA",
    "reprfn-noedge": "RepRFN without edge branches",
    "reprfn-3x3": "3x3 branch only (no reparameterization)",
    "loss-l1": "L1",
    "loss-l2": "L2",
    "loss-charbonnier": "Charbonnier",
    "loss-fft": "FFT only",
}
LOSS_LABEL = {"reprfn": "0.9 Charbonnier + 0.1 FFT (the paper's)"}


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":--"] + ["--:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def psnr(run: dict[str, Any], dataset: str) -> str:
    return f"{run[dataset]['psnr_y']:.2f}"


def table1(results: dict[str, Any]) -> str:
    from experiments.paper import TABLES

    runs, cx = results["runs"], results.get("complexity", {})
    rows = []
    for name in TABLES["table1"]:
        if name not in runs:
            continue
        c = cx.get(name, {})
        rows.append([LABELS[name], f"{c['params']:,}" if c else "-", f"{c['macs'] / 1e9:.2f}" if c else "-",
                     f"{c['activations'] / 1e6:.2f}" if c else "-", c.get("convs", "-"),
                     c.get("peak_memory_mb", "-"), c.get("runtime_ms", "-"), psnr(runs[name], "set5"),
                     psnr(runs[name], "b100")])
    return table(["model", "params", "MACs (G)", "activations (M)", "convs", "peak MB", "CPU ms",
                  "Set5", "B100"], rows)


def runs_table(results: dict[str, Any], names: Sequence[str], labels: dict[str, str] | None = None) -> str:
    runs, cx = results["runs"], results.get("complexity", {})
    rows = []
    for name in names:
        if name not in runs:
            continue
        r, c = runs[name], cx.get(name, {})
        rows.append([(labels or {}).get(name, LABELS.get(name, name)), f"{r['train_params']:,}",
                     f"{c['params']:,}" if c else "-", f"{c['macs'] / 1e9:.2f}" if c else "-",
                     psnr(r, "set5"), f"{r['set5']['ssim_y']:.4f}", psnr(r, "b100"), f"{r['b100']['ssim_y']:.4f}"])
    return table(["model", "params (training)", "params (deploy)", "MACs (G)", "Set5 PSNR", "Set5 SSIM",
                  "B100 PSNR", "B100 SSIM"], rows)


def losses_table(results: dict[str, Any]) -> str:
    from experiments.paper import TABLES

    runs = results["runs"]
    rows = [[LOSS_LABEL.get(n, LABELS.get(n, n)), psnr(runs[n], "b100"), f"{runs[n]['b100']['ssim_y']:.4f}",
             psnr(runs[n], "set5")] for n in TABLES["losses"] if n in runs]
    return table(["loss", "B100 PSNR", "B100 SSIM", "Set5 PSNR"], rows)


def noise_line(results: dict[str, Any]) -> str:
    """The spread of RepRFN's scores over seeds: the scale below which rows do not differ."""
    from experiments.paper import TABLES

    runs = [results["runs"][n] for n in TABLES["noise"] if n in results["runs"]]
    if len(runs) < 2:
        return "_not measured yet_"
    parts = []
    for dataset, label in (("set5", "Set5"), ("b100", "B100")):
        values = [r[dataset]["psnr_y"] for r in runs]
        parts.append(f"{label} {' / '.join(f'{v:.2f}' for v in values)} dB "
                     f"(spread {max(values) - min(values):.2f} dB)")
    seeds = ", ".join(str(r.get("seed", results["budget"]["seed"])) for r in runs)
    return f"RepRFN trained with seeds {seeds}: " + "; ".join(parts) + "."


def pruning_table(results: dict[str, Any]) -> str:
    p = results.get("pruning")
    if not p:
        return "_not measured yet_"
    by_conv: dict[str, list[float]] = {}
    for row in p["rows"]:
        by_conv.setdefault(row["conv"], []).append(row["drop_db"])
    ranked = sorted(by_conv.items(), key=lambda kv: -sum(kv[1]) / len(kv[1]))
    blocks = sorted({row["block"] for row in p["rows"]}, key=lambda b: int(b[1:]))
    rows = [[f"`{conv}`", f"{sum(d) / len(d):.3f}", *[f"{x:.3f}" for x in d]] for conv, d in ranked]
    head = (f"Pruned: {p['fraction']:.0%} of the filters of one conv at a time (smallest L1 norm), "
            f"no fine-tuning; unpruned Set5 PSNR {p['set5_psnr_y']:.2f} dB. Drop in dB, ranked by the mean "
            "over the four blocks.\n\n")
    return head + table(["conv", "mean drop", *[f"{b}" for b in blocks]], rows)


SCHEMES = ["eager, training form (nine branches)", "eager, training form (online fusion)", "eager, deploy form",
           "TorchScript (frozen)", "ONNX Runtime", "OpenVINO (float32)", "reprfn fast PyTorch path"]
MODEL_NAMES = {"reprfn": "RepRFN", "rfdn": "RFDN", "imdn": "IMDN"}


def deploy_table(results: dict[str, Any]) -> str:
    d = results.get("deploy")
    if not d:
        return "_not measured yet_"
    ms = d["median_ms"]
    models = [m for m in MODEL_NAMES if any(k.startswith(f"{m}|") for k in ms)]
    schemes = [s for s in SCHEMES if any(k.endswith(f"|{s}") for k in ms)]
    schemes += sorted({k.split("|", 1)[1] for k in ms} - set(schemes))
    rows = [[s, *[f"{ms[f'{m}|{s}']:.0f}" if f"{m}|{s}" in ms else "-" for m in models]] for s in schemes]
    head = (f"Median ms of {d['rounds']} interleaved rounds, input {d['input']} (x4), "
            f"{d['threads']} CPU threads.\n\n")
    return head + table(["scheme", *[MODEL_NAMES[m] for m in models]], rows)


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------


def plot_table1(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.paper import TABLES

    runs, cx = results["runs"], results.get("complexity", {})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    for ax, key, unit in ((axes[0], "macs", "MACs at 3x180x320 (G)"), (axes[1], "runtime_ms", "CPU ms at 3x180x320")):
        for name in TABLES["table1"]:
            if name in runs and name in cx:
                x = cx[name][key] / (1e9 if key == "macs" else 1)
                y = runs[name]["set5"]["psnr_y"]
                ax.scatter(x, y, s=40, color="#c0392b" if name == "reprfn" else "#2c3e50")
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(unit)
        ax.xaxis.set_major_locator(plt.MaxNLocator(4))
        ax.margins(x=0.25)
        ax.set_ylabel("Set5 PSNR-Y (dB), x4")
        ax.grid(alpha=0.3)
    fig.suptitle("Residual learning vs information distillation (one reduced budget)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_pruning(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = results["pruning"]
    by_conv: dict[str, list[float]] = {}
    for row in p["rows"]:
        by_conv.setdefault(row["conv"], []).append(row["drop_db"])
    ranked = sorted(by_conv.items(), key=lambda kv: sum(kv[1]) / len(kv[1]))
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(ranked) + 1.2), dpi=110)
    means = [sum(d) / len(d) for _, d in ranked]
    colors = ["#2980b9" if "esa" in c else ("#27ae60" if "_d" in c or c.endswith("c5") else "#7f8c8d")
              for c, _ in ranked]
    ax.barh([c for c, _ in ranked], means, color=colors)
    for i, m in enumerate(means):
        ax.annotate(f"{m:.3f}", (max(m, 0), i), textcoords="offset points", xytext=(3, -3), fontsize=7)
    ax.set_xlabel(f"Set5 PSNR drop (dB) when {p['fraction']:.0%} of one conv's filters are pruned")
    ax.set_title("RFDB pruning sensitivity (mean over blocks; blue: ESA, green: 1x1 distillation/fusion)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The document
# ----------------------------------------------------------------------------------------------


def sections(results: dict[str, Any]) -> dict[str, str]:
    from experiments.paper import TABLES

    b = results["budget"]
    budget = (f"x{b['scale']}, {b['iters']:,} iterations of batch {b['batch_size']} at HR patch "
              f"{b['patch_size']} (LR {b['patch_size'] // b['scale']}): {b['iters'] * b['batch_size']:,} patches "
              f"per run; Adam, lr {b['lr']:g} halved every {b['lr_step']:,} iterations; {b['amp']} autocast; "
              f"seed {b['seed']}; 491 training photos (BSD200, T91, BSDS500-test)")
    return {
        "budget": budget,
        "noise": noise_line(results),
        "table1": table1(results),
        "redundancy": runs_table(results, TABLES["redundancy"]),
        "pruning": pruning_table(results),
        "losses": losses_table(results),
        "deploy": deploy_table(results),
        "branches": runs_table(results, TABLES["branches"]),
    }


def fill(text: str, name: str, body: str) -> str:
    """Replace what lies between the ``name`` markers (which must exist) by ``body``."""
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"docs/experiments.md has no {name} markers")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def write_docs(results: dict[str, Any], doc: Path) -> None:
    text = doc.read_text()
    for name, body in sections(results).items():
        text = fill(text, name, body)
    doc.write_text(text)
    if results.get("complexity"):
        plot_table1(results, doc.parent / "experiments_table1.png")
    if results.get("pruning"):
        plot_pruning(results, doc.parent / "experiments_pruning.png")
    print(f"wrote {doc}")
