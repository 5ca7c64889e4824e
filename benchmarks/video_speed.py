"""Video upscaling speed against the image path, side by side in ONE run on the same frames.

    python benchmarks/video_speed.py                  # 60 frames of 320x180 -> 1280x720, x4, bundled model
    python benchmarks/video_speed.py --frames 120 --size 640x360 --rounds 3

A clip is made once (H.264 yuv420p, a pan across the bundled photo at 25 frames/s: natural content,
every frame different). Then, in each round and in turn:

* **images**: ``reprfn.upscale`` on each frame as an RGB array (decoded beforehand, not timed);
* **video**: ``reprfn.upscale_video`` on the file: decode, the same model on each frame, colour
  conversion both ways and libx264 encoding (crf 18, preset medium), written to a file;
* **pipeline alone**: ``reprfn.upscale_video`` with nearest-neighbour upscaling as the model: what
  decoding, colour conversion and encoding cost by themselves.

The model is prepared once before the rounds (``reprfn.upscale`` on one frame), so no round pays for
loading it or opening its engine. Reported: frames/s per path (median over rounds) and the ratio
video / images in the same round (median).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import reprfn
from reprfn.export import sample_image
from reprfn.images import read_image
from reprfn.runtime import hardware

try:
    import av
except ImportError:
    sys.exit('this benchmark needs PyAV: pip install "reprfn[video]"')


class Nearest(nn.Module):
    """Nearest-neighbour x4 as a model: costs next to nothing, so the pipeline's own cost shows."""

    scale, in_channels, arch = 4, 3, "nearest"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=4, mode="nearest")


def make_clip(path: Path, frames: int, height: int, width: int) -> list[np.ndarray]:
    """A pan across the bundled photo, resized to fit; returns the frames as decoded from the file."""
    photo = torch.from_numpy(np.array(read_image(sample_image()))).permute(2, 0, 1)[None].float()
    big = F.interpolate(photo, size=(height, width + frames), mode="bilinear", antialias=True, align_corners=False)
    big = big[0].permute(1, 2, 0).clamp(0, 255).round().byte().numpy()
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        stream.codec_context.options = {"crf": "18"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(big[:, i:i + width]), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(str(path)) as inp:
        return [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", default="180x320", help="input HxW (default 180x320: 720p out at x4)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = map(int, args.size.split("x"))
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16", "amx_int8")
    print("CPU flags (of " + ", ".join(wanted) + "): " + " ".join(f for f in wanted if f in hardware.cpu_flags()))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "clip.mp4"
        frames = make_clip(src, args.frames, height, width)
        net = reprfn.api.prepare(reprfn.api.resolve_model(None, 4, torch.device("cpu")), "cpu", "auto")
        reprfn.upscale(frames[0], scale=4)  # prepared once: the engine opened before any round
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, PyAV {av.__version__}; "
              f"{len(frames)} frames {width}x{height} -> {width * 4}x{height * 4}, bundled x4, "
              f"precision auto = {hardware.resolve_precision('auto', torch.device('cpu'))}; engine: {net.describe()}")
        rates: dict[str, list[float]] = {"images": [], "video": [], "pipeline alone": []}
        ratios = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            for frame in frames:
                reprfn.upscale(frame, scale=4)
            rates["images"].append(len(frames) / (time.perf_counter() - t))
            t = time.perf_counter()
            reprfn.upscale_video(src, Path(tmp) / "out.mp4", scale=4, overwrite=True)
            rates["video"].append(len(frames) / (time.perf_counter() - t))
            ratios.append(rates["video"][-1] / rates["images"][-1])
            t = time.perf_counter()
            reprfn.upscale_video(src, Path(tmp) / "near.mp4", model=Nearest(), overwrite=True)
            rates["pipeline alone"].append(len(frames) / (time.perf_counter() - t))
    for name, values in rates.items():
        print(f"  {name:<16} {statistics.median(values):7.2f} frames/s")
    print(f"  video / images   {statistics.median(ratios):7.2f}x")


if __name__ == "__main__":
    main()
