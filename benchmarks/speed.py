"""CPU inference speed, side by side in ONE run on the same inputs: the authors' deploy structure
in eager PyTorch (the baseline), each faster path, the training form, RFDN and IMDN; the
machine's conv throughput; and the peak memory of a whole-image x4 forward at 3x540x960.

    python benchmarks/speed.py                      # print everything
    python benchmarks/speed.py --write-docs         # ... and regenerate docs/performance.md's
                                                    #     inference section and docs/speed.png
    python benchmarks/speed.py --compile            # also torch.compile (inductor; slow to build)

Timing: every variant is run once per round, in turn, for ``--rounds`` rounds after one warm-up
each, so that all of them see the same background load; the reported time is the median, the
ratio is the median over rounds of (baseline time / variant time) in the same round. All runs use
the same thread count (``torch.get_num_threads()``, printed) and the same input: the bundled
photo resized to the size (natural content: random noise drives these nets out of range).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from kernels_experimental import WINOGRAD, KernelSetEngine, winograd_available

import reprfn
from reprfn.checkpoint import bundled_weights
from reprfn.export import sample_image
from reprfn.images import read_image, to_tensor
from reprfn.metrics import psnr
from reprfn.models import build, set_mode
from reprfn.profile import count, peak_memory_mb
from reprfn.runtime import hardware
from reprfn.runtime.engines import FusedCPUEngine, TorchEngine
from reprfn.runtime.info import describe
from reprfn.runtime.kernels import fused_ops_available
from reprfn.runtime.onnx import (
    OnnxEngine,
    cached_export,
    onnxruntime_available,
    ort_session,
)
from reprfn.runtime.openvino import OpenVinoEngine, openvino_available
from reprfn.runtime.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT.parent / "shared" / "weights" / "official" / "reprfn_ntire_x4.pth"
OFFICIAL_RFDN = ROOT.parent / "shared" / "weights" / "official" / "rfdn_ntire_x4.pth"
DOC = ROOT / "docs" / "performance.md"
PLOT = ROOT / "docs" / "speed.png"
BEGIN, END = "<!-- speed.py:begin -->", "<!-- speed.py:end -->"
BASELINE = "authors' deploy structure, eager NCHW"


def photo(h: int, w: int) -> torch.Tensor:
    """The sample photo at h x w, on 8-bit levels (as a photo is): its uint8 array is the same image."""
    img = to_tensor(read_image(sample_image()))
    img = F.interpolate(img, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return img.clamp(0, 1).mul(255).round().div(255).contiguous()


class OnArrays:
    """``reprfn.upscale`` given the uint8 HxWx3 array of an image, as a user's photo is given (what
    ``reprfn upscale`` runs): the array is made once per input, outside the timed call; the timed
    call returns the uint8 array (``as_tensor`` turns it back for the differences)."""

    def __init__(self, **kw) -> None:
        self.kw = kw
        self.last: tuple[torch.Tensor, np.ndarray] | None = None  # the input given last, and its array

    def __call__(self, t: torch.Tensor) -> np.ndarray:
        if self.last is None or self.last[0] is not t:
            self.last = (t, t[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).contiguous().numpy())
        return reprfn.upscale(self.last[1], **self.kw)


def as_tensor(y) -> torch.Tensor:
    """A variant's output as a float (1, C, H, W) tensor in [0, 1] (uint8 arrays from ``OnArrays``)."""
    if isinstance(y, torch.Tensor):
        return y
    return torch.from_numpy(y).permute(2, 0, 1)[None].float().div(255)


def conv_rate(h: int, w: int, rounds: int) -> dict[str, float]:
    """GFLOP/s (2 x MACs per second) of a plain 48->48 3x3 conv at h x w, NCHW and channels-last."""
    conv = torch.nn.Conv2d(48, 48, 3, padding=1).eval()
    x = torch.rand(1, 48, h, w)
    xs = {"nchw": x, "channels_last": x.contiguous(memory_format=torch.channels_last)}
    flop = 2 * 48 * 48 * 9 * h * w
    times: dict[str, list[float]] = {k: [] for k in xs}
    with torch.inference_mode():
        for k in xs:
            conv(xs[k])
        for _ in range(max(rounds, 5)):
            for k, v in xs.items():
                t = time.perf_counter()
                conv(v)
                times[k].append(time.perf_counter() - t)
    return {k: flop / statistics.median(v) / 1e9 for k, v in times.items()}


def onnx_runner(model: torch.nn.Module, threads: int,
                spinning: bool = False) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """ONNX Runtime on the cached export, through the runtime's session factory (``spinning``: its
    one option that only a benchmark changes)."""
    if not onnxruntime_available():
        return None
    path = cached_export(model, directory=tempfile.mkdtemp(prefix="reprfn-speed-"), check=False)
    return OnnxEngine(ort_session(path, threads=threads, spinning=spinning), path)


def openvino_runner(model: torch.nn.Module, threads: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """OpenVINO's CPU plugin on the ONNX export, f32, latency hint (when ``openvino`` is installed)."""
    if not openvino_available():
        return None
    path = cached_export(model, directory=tempfile.mkdtemp(prefix="reprfn-speed-"), check=False)
    return OpenVinoEngine(path, describe(model), threads)


def jit_frozen(model: torch.nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    with torch.no_grad():
        traced = torch.jit.trace(copy.deepcopy(model).eval(), x, check_trace=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    return frozen


def compiled(model: torch.nn.Module, x: torch.Tensor) -> tuple[Callable, float]:
    import torch._inductor.config as cfg

    cfg.freezing = True
    fn = torch.compile(copy.deepcopy(model).eval(), backend="inductor")
    t = time.perf_counter()
    with torch.inference_mode():
        fn(x)
    return fn, time.perf_counter() - t


def variants(model: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> dict[str, tuple[Callable, str]]:
    """name -> (callable, kind); kind "same" = same function as the baseline (diffs reported),
    "lossy" = the same in a lower precision (diffs and dPSNR reported), "other" = another model."""
    threads = torch.get_num_threads()
    cl = torch.channels_last
    out: dict[str, tuple[Callable, str]] = {
        BASELINE: (model, "same"),
        "channels-last eager": (lambda t: model(t.contiguous(memory_format=cl)).contiguous(), "same"),
    }
    if fused_ops_available():
        out["PyTorch fast path: fused oneDNN post-ops, channels-last"] = (FusedCPUEngine(model), "same")
    if winograd_available():
        out["Winograd F(6x6,3x3) (NNPACK), NCHW"] = (KernelSetEngine(model, WINOGRAD), "same")
    default = prepare(model)
    if default.whole_name not in (None, default.tiles.name):
        default.whole()  # export (or read the cached export) before timing
        out[f"**default**: {default.describe().split(' (')[0]} (whole images)"] = (default, "same")
    for spinning in (False, True) if args.ort_spinning else (False,):
        ort_fn = onnx_runner(model, threads, spinning=spinning)
        if ort_fn is not None:
            name = "idle threads spinning (its default)" if spinning else "all graph optimizations, no spinning"
            out[f"ONNX Runtime, {name}"] = (ort_fn, "same")
    ov_fn = openvino_runner(model, threads)
    if ov_fn is not None:
        out["OpenVINO (CPU plugin, f32, latency hint)"] = (ov_fn, "same")
    try:
        out["TorchScript freeze + optimize_for_inference"] = (jit_frozen(model, x), "same")
    except Exception as exc:  # noqa: BLE001 - report and go on
        print(f"  (TorchScript freeze failed: {type(exc).__name__}: {str(exc)[:100]})")
    # bf16: not the same function (8-bit mantissas), reported with its difference and dPSNR
    out["bf16: fused oneDNN post-ops on a bf16 copy, channels-last"] = (FusedCPUEngine(model, "bf16"), "lossy")
    out["bf16: autocast, channels-last"] = (TorchEngine(model, "cpu", "bf16", channels_last=True), "lossy")
    if openvino_available():
        path = cached_export(model, directory=tempfile.mkdtemp(prefix="reprfn-speed-"), check=False)
        out["bf16: OpenVINO (INFERENCE_PRECISION_HINT bf16)"] = (OpenVinoEngine(path, describe(model), threads, "bf16"),
                                                                 "lossy")
    emulated = "" if "amx_fp16" in hardware.cpu_flags() else " (no AMX-FP16 on this CPU)"
    out[f"fp16: autocast, channels-last{emulated}"] = (TorchEngine(model, "cpu", "fp16", channels_last=True), "lossy")
    auto = hardware.resolve_precision("auto", torch.device("cpu"))
    out[f"**reprfn.upscale(tensor, model=m)**, default precision (auto: {auto})"] = (
        lambda t: reprfn.upscale(t, model=model, tile=0, device="cpu"), "same" if auto == "fp32" else "lossy")
    out["reprfn.upscale(tensor, model=m, precision='fp32')"] = (
        lambda t: reprfn.upscale(t, model=model, tile=0, device="cpu", precision="fp32"), "same")
    out[f"**reprfn.upscale(uint8 array, model=m)**, default precision ({auto}), tile auto"] = (
        OnArrays(model=model, device="cpu"), "same" if auto == "fp32" else "lossy")
    out["reprfn.upscale(uint8 array, model=m, precision='fp32'), tile auto"] = (
        OnArrays(model=model, device="cpu", precision="fp32"), "same")
    if args.compile:
        fn, secs = compiled(model, x)
        out[f"torch.compile inductor + freezing (built in {secs:.0f} s)"] = (fn, "same")
    train = args.train_model
    out["train form, online fusion"] = (set_mode(copy.deepcopy(train), "online"), "other")
    out["train form, nine branches"] = (set_mode(copy.deepcopy(train), "branches"), "other")
    out["RFDN (NTIRE baseline), eager"] = (args.rfdn, "other")
    out["IMDN, eager"] = (args.imdn, "other")
    skip = [k for k in out if k != BASELINE and any(s and s.lower() in k.lower() for s in args.skip.split(","))]
    for k in skip:
        del out[k]
    return out


def time_all(fns: dict[str, tuple[Callable, str]], x: torch.Tensor, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for fn, _ in fns.values():  # warm-up (oneDNN primitive creation, NNPACK pool, ORT arena)
            fn(x)
        for _ in range(rounds):
            for name, (fn, _) in fns.items():
                t = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t)
    return times


BENCH = ROOT.parent / "shared" / "data" / "benchmark"
DPSNR_SETS = ("Set5", "Set14")


def mean_psnr_y(fn: Callable[[torch.Tensor], torch.Tensor], folder: Path) -> float:
    """Mean Y-PSNR (border 4) of ``fn`` on a benchmark folder's x4 HR/LR pairs (the protocol's numbers)."""
    scores = []
    for hr_path in sorted((folder / "HR").iterdir()):
        hr, lr = read_image(hr_path), read_image(folder / "LR" / hr_path.name)
        x = to_tensor(lr if lr.ndim == 3 else lr[..., None].repeat(3, 2))
        with torch.inference_mode():
            sr = as_tensor(fn(x)).clamp(0, 1).mul(255).round().byte()[0].permute(1, 2, 0).numpy()
        ref = hr if hr.ndim == 3 else hr[..., None].repeat(3, 2)
        scores.append(psnr(sr, ref, crop_border=4, test_y_channel=True))
    return sum(scores) / len(scores)


def dpsnr(fns: dict[str, tuple[Callable, str]]) -> dict[str, tuple[float, ...]]:
    """dPSNR (dB) on Set5 and Set14 x4 of every variant that computes the baseline's function,
    exactly (``same``) or in a lower precision (``lossy``): what it costs, measured the protocol's way."""
    folders = [BENCH / name / "x4" for name in DPSNR_SETS]
    if not all(f.is_dir() for f in folders):
        return {}
    base = [mean_psnr_y(fns[BASELINE][0], f) for f in folders]
    return {name: tuple(mean_psnr_y(fn, f) - b for f, b in zip(folders, base, strict=True))
            for name, (fn, kind) in fns.items() if kind in ("same", "lossy") and name != BASELINE}


def run_size(model, h: int, w: int, args) -> dict:
    x = photo(h, w)
    fns = variants(model, x, args)
    with torch.inference_mode():
        ref = model(x)
        diffs = {}
        for name, (fn, kind) in fns.items():
            if kind in ("same", "lossy"):
                y = as_tensor(fn(x))
                diffs[name] = ((y.clamp(0, 1) - ref.clamp(0, 1)).abs().max().item(),  # the API's outputs are clamped
                               (y.clamp(0, 1).mul(255).round() - ref.clamp(0, 1).mul(255).round()).abs().max().item())
    losses = dpsnr(fns) if args.dpsnr else {}
    rates = conv_rate(h, w, args.rounds)
    times = time_all(fns, x, args.rounds)
    base = times[BASELINE]
    macs = {"reprfn": count(model, (3, h, w)).conv_macs, "rfdn": count(args.rfdn, (3, h, w)).conv_macs,
            "imdn": count(args.imdn, (3, h, w)).conv_macs,
            "branches": count(set_mode(copy.deepcopy(args.train_model), "branches"), (3, h, w)).conv_macs}
    rows = []
    for name, ts in times.items():
        key = ("rfdn" if name.startswith("RFDN") else "imdn" if name.startswith("IMDN")
               else "branches" if "nine branches" in name else "reprfn")
        ms = statistics.median(ts) * 1000
        ratio = statistics.median(b / t for b, t in zip(base, ts, strict=True))
        gflops = 2 * macs[key] / (ms / 1000) / 1e9
        rows.append({"variant": name, "ms": ms, "min_ms": min(ts) * 1000, "speedup": ratio,
                     "gflops": gflops, "of_conv_nchw": gflops / rates["nchw"],
                     "of_conv_cl": gflops / rates["channels_last"],
                     "max_abs_diff": diffs.get(name, (None, None))[0], "max_levels": diffs.get(name, (None, None))[1],
                     "dpsnr": losses.get(name)})
    return {"size": f"3x{h}x{w}", "conv_gflops": rates, "rows": rows, "rounds": args.rounds}


def memory(args) -> list[dict]:
    """Peak memory of one whole-image x4 forward (fresh process each), fused RepRFN vs RFDN."""
    shape = (3, *args.memory_size)
    out = []
    for name, model, fast in (("RepRFN fused, eager PyTorch", args.model, False),
                              ("RepRFN fused, default path (reprfn upscale)", args.model, True),
                              ("RFDN, eager PyTorch", args.rfdn, False)):
        r = peak_memory_mb(model, shape, fast=fast, detail=True)
        out.append({"model": name, **r})
        print(f"  {name:<34} {r['peak_memory_mb']:8.0f} MB  (process before: {r['process_before_mb']:.0f} MB, "
              f"output {r['output_mb']:.0f} MB)")
    return out


def table(res: dict) -> str:
    lines = ["| variant | ms | speed-up vs baseline | GFLOP/s | of NCHW conv | of channels-last conv | max abs diff "
             "| 8-bit levels | dPSNR Set5 / Set14 (dB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        diff = f"{r['max_abs_diff']:.1e}" if r["max_abs_diff"] is not None else "(other model)"
        lev = f"{r['max_levels']:.0f}" if r["max_levels"] is not None else ""
        loss = " / ".join(f"{d:+.3f}" for d in r["dpsnr"]) if r.get("dpsnr") else ""
        lines.append(f"| {r['variant']} | {r['ms']:.0f} | {r['speedup']:.2f}x | {r['gflops']:.0f} | "
                     f"{r['of_conv_nchw']:.0%} | {r['of_conv_cl']:.0%} | {diff} | {lev} | {loss} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    """A horizontal bar chart of speed-ups (Pillow only, no plotting library needed)."""
    from PIL import Image, ImageDraw, ImageFont

    rows = [r for r in results[0]["rows"]]
    names = [r["variant"].replace("**", "") for r in rows]
    try:
        font = ImageFont.load_default(size=15)
        small = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: bitmap font only
        font = small = ImageFont.load_default()
    left, bar_h, gap, top = 440, 14, 10, 60
    width = 1000
    height = top + len(rows) * (2 * bar_h + gap) + 50
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), f"RepRFN x4 on the CPU ({torch.get_num_threads()} threads): speed-up over the authors' "
                     f"deploy structure in eager PyTorch (higher is better)", fill="black", font=font)
    colours = ("#1f77b4", "#ff7f0e")
    d.rectangle((left, 34, left + 12, 46), fill=colours[0])
    d.text((left + 18, 32), results[0]["size"], fill="black", font=small)
    if len(results) > 1:
        d.rectangle((left + 130, 34, left + 142, 46), fill=colours[1])
        d.text((left + 148, 32), results[1]["size"], fill="black", font=small)
    vmax = max(r["speedup"] for res in results for r in res["rows"]) * 1.1
    scale = (width - left - 80) / vmax
    x1 = left + scale * 1.0
    for i, name in enumerate(names):
        y = top + i * (2 * bar_h + gap)
        d.text((10, y + 6), name[:60], fill="black", font=small)
        for j, res in enumerate(results[:2]):
            s = res["rows"][i]["speedup"]
            d.rectangle((left, y + j * bar_h, left + s * scale, y + (j + 1) * bar_h - 2), fill=colours[j])
            d.text((left + s * scale + 4, y + j * bar_h), f"{s:.2f}x", fill="black", font=small)
    d.line((x1, top - 6, x1, height - 40), fill="#444444", width=1)
    d.text((x1 - 10, height - 36), "1.0x", fill="black", font=small)
    img.save(path)


def complexity_table() -> str:
    """The counter's figures for every registered model (x4, random weights: counts need no values)."""
    from reprfn.models import names

    lines = ["| model | form | params | MACs 3x180x320 | activations | convs | MACs 3x256x256 | activations "
             "| not counted (3x180x320) |", "|---|---|---|---|---|---|---|---|---|"]
    for name in names():
        forms = [("fused", build(name, form="deploy")) if name == "reprfn" else ("(one form)", build(name))]
        if name == "reprfn":
            forms.append(("train (nine branches)", set_mode(build(name), "branches")))
        for form, model in forms:
            a, b = count(model, (3, 180, 320)), count(model, (3, 256, 256))
            lines.append(f"| {name} | {form} | {a.params:,} | {a.macs / 1e9:.2f} G | {a.activations / 1e6:.2f} M | "
                         f"{a.convs} | {b.macs / 1e9:.2f} G | {b.activations / 1e6:.2f} M | "
                         f"{a.uncounted_ops / 1e6:.0f} M ops |")
    return "\n".join(lines)


def isa_note() -> str:
    """The oneDNN instruction-set cap in force, in words ('' when none): a run under
    ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` is this CPU without AMX (PyTorch's and OpenVINO's
    oneDNN both obey it; ONNX Runtime's own kernels do not, and use no AMX in fp32 anyway)."""
    cap = hardware.onednn_isa_cap()
    amx = "on" if hardware.cpu_has_amx() else "off"
    return "" if cap is None else f" oneDNN capped at {cap} (ONEDNN_MAX_CPU_ISA; AMX {amx})."


def write_docs(results: list[dict], mem: list[dict], args) -> None:
    threads = torch.get_num_threads()
    parts = [BEGIN, "", "Complexity (`reprfn profile`, the NTIRE counter's conventions; x4):", "",
             complexity_table(), "",
             f"`python benchmarks/speed.py --write-docs` — one run, {args.rounds} interleaved rounds, "
             f"{threads} threads, weights: {args.weights_name}. Speed-up = median over rounds of "
             "baseline time / variant time in the same round. GFLOP/s = 2 x the counter's conv MACs "
             "per second; the plain 48-channel 3x3 conv at the same size is the machine's reference. "
             "CPU flags: " + (" ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_fp16")
                                      if f in hardware.cpu_flags()) or "(not read)") + "." + isa_note(), ""]
    for res in results:
        rates = res["conv_gflops"]
        parts += [f"**{res['size']}** (plain 3x3 conv, 48 channels: {rates['nchw']:.0f} GFLOP/s NCHW, "
                  f"{rates['channels_last']:.0f} GFLOP/s channels-last)", "", table(res), ""]
    parts += [f"![speed-ups]({PLOT.name})", "",
              f"Peak memory of one whole-image x4 forward at 3x{args.memory_size[0]}x{args.memory_size[1]} "
              "(growth of a fresh process's resident set during the forward, CPU, fp32):", "",
              "| model | peak (MB) | process before (MB) | output (MB) |", "|---|---|---|---|"]
    for m in mem:
        parts.append(f"| {m['model']} | {m['peak_memory_mb']:.0f} | {m['process_before_mb']:.0f} "
                     f"| {m['output_mb']:.0f} |")
    parts += ["", END]
    text = DOC.read_text()
    block = "\n".join(parts)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)
    plot(results, PLOT)
    (ROOT / "docs" / "speed.json").write_text(json.dumps({"threads": threads, "results": results, "memory": mem},
                                                         indent=1) + "\n")
    print(f"wrote {DOC}, {PLOT} and docs/speed.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="180x320,256x256", help="LR sizes HxW, comma-separated")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (inductor); slow to build")
    ap.add_argument("--ort-spinning", action="store_true",
                    help="also time ONNX Runtime with spinning idle threads "
                         "(they keep spinning into the next variant's turn)")
    ap.add_argument("--memory-size", default="540x960", help="HxW of the peak-memory forward ('0' skips it)")
    ap.add_argument("--skip", default="", help="comma-separated substrings of variant names to leave out")
    ap.add_argument("--dpsnr", action="store_true", help="also measure dPSNR on Set5/Set14 x4 (../shared)")
    ap.add_argument("--write-docs", action="store_true", help="regenerate docs/performance.md's section and plot")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weights = OFFICIAL if OFFICIAL.is_file() else bundled_weights(4)
    released = weights == OFFICIAL
    args.weights_name = "the authors' released x4 (deploy)" if released else "the bundled x4 (same structure)"
    args.model = reprfn.load_model(weights).eval()
    # the training form: random branch weights (its cost does not depend on the values)
    args.train_model = build("reprfn", scale=4).eval()
    args.rfdn = (reprfn.load_model(OFFICIAL_RFDN) if OFFICIAL_RFDN.is_file() else build("rfdn")).eval()
    args.imdn = build("imdn").eval()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16", "amx_int8")
    print("CPU flags (of " + ", ".join(wanted) + "): " + " ".join(f for f in wanted if f in hardware.cpu_flags())
          + isa_note())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, weights: {args.weights_name}; "
          f"fused oneDNN ops: {fused_ops_available()}, NNPACK: {winograd_available()}")
    results = []
    for size in args.sizes.split(","):
        h, w = map(int, size.split("x"))
        res = run_size(args.model, h, w, args)
        results.append(res)
        rates = res["conv_gflops"]
        print(f"\n3x{h}x{w}: plain 48-ch 3x3 conv {rates['nchw']:.0f} GFLOP/s NCHW, "
              f"{rates['channels_last']:.0f} GFLOP/s channels-last")
        print(f"  {'variant':<62} {'ms':>7} {'speed-up':>8} {'GFLOP/s':>7} {'of conv':>7} {'max|diff|':>9} "
              f"{'dPSNR ' + '/'.join(DPSNR_SETS):>16}")
        for r in res["rows"]:
            diff = f"{r['max_abs_diff']:.1e}" if r["max_abs_diff"] is not None else "-"
            loss = "/".join(f"{d:+.3f}" for d in r["dpsnr"]) if r.get("dpsnr") else "-"
            print(f"  {r['variant'].replace('**', ''):<62} {r['ms']:7.0f} {r['speedup']:7.2f}x {r['gflops']:7.0f} "
                  f"{r['of_conv_nchw']:7.0%} {diff:>9} {loss:>16}")
    mem: list[dict] = []
    if args.memory_size != "0":
        args.memory_size = tuple(map(int, args.memory_size.split("x")))
        print(f"\npeak memory of one x4 forward at 3x{args.memory_size[0]}x{args.memory_size[1]} (fresh process each):")
        mem = memory(args)
    if args.write_docs:
        write_docs(results, mem, args)


if __name__ == "__main__":
    main()
