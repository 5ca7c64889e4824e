"""The training photos packed small enough to travel to a GPU machine with the repository.

A GPU machine gets a copy of the working tree (64 MiB at most), not ``../shared``; the 571
training photos are 159 MB as PNG/BMP/JPEG, and even their x4 LR alone is 15 MB as PNG. The pack
holds every HR photo as JPEG 4:4:4 at the highest quality whose pack fits ``--budget-mb``
(measured on a sample: quality 90 is about 45 MB at 40 dB against the originals, 95 about 60 MB
at 48 dB). The JPEG error is far below what an x4 network gets wrong (27-32 dB), and the LR that
the trainer makes from the decoded HR with the MATLAB-exact resizer averages it further away.

    python experiments/gpu_pack.py [--out .gpu/train.zip] [--budget-mb 45]
    python experiments/gpu_pack.py --unpack .gpu/train.zip --to /tmp/train   # on the GPU machine

``reprfn train`` then reads ``data.train: [/tmp/train]``. Set5 x4 (HR and MATLAB LR, 1 MB) is copied to
``.gpu/Set5/x4`` beside the pack for validation there.
"""

from __future__ import annotations

import argparse
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from reprfn.metrics import psnr

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT.parent / "shared" / "data" / "train"
SET5 = ROOT.parent / "shared" / "data" / "benchmark" / "Set5" / "x4"
FOLDERS = ("bsd200", "t91", "bsds500-test", "sunhays80")
SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg")


def _photo(path: Path) -> np.ndarray:
    """RGB uint8, cropped to a multiple of 12 (the training photos are plain 8-bit files)."""
    arr = np.asarray(Image.open(path).convert("RGB"))
    return np.ascontiguousarray(arr[: arr.shape[0] // 12 * 12, : arr.shape[1] // 12 * 12])


def _jpeg(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def pack(out: Path, budget_mb: float) -> tuple[int, float]:
    """Write the pack; returns (JPEG quality, mean PSNR of the JPEGs against the originals).
    Photos are cropped to a multiple of 12, so every scale's LR has the same content."""
    photos = [(f"{folder}-{path.stem}", _photo(path)) for folder in FOLDERS
              for path in sorted((TRAIN / folder).iterdir()) if path.suffix.lower() in SUFFIXES]
    for quality in range(96, 79, -2):
        blobs = {name: _jpeg(hr, quality) for name, hr in photos}
        if sum(map(len, blobs.values())) / 1e6 <= budget_mb:
            break
    else:
        raise SystemExit(f"no JPEG quality >= 80 fits {budget_mb} MB")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, _ in photos:
            z.writestr(f"{name}.jpg", blobs[name])
    sample = photos[:: max(1, len(photos) // 40)]
    fidelity = float(np.mean([psnr(np.asarray(Image.open(io.BytesIO(blobs[n]))), hr) for n, hr in sample]))
    return quality, fidelity


def unpack(src: Path, to: Path) -> int:
    with zipfile.ZipFile(src) as z:
        z.extractall(to)
        return len(z.namelist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu" / "train.zip")
    ap.add_argument("--budget-mb", type=float, default=45.0)
    ap.add_argument("--unpack", type=Path)
    ap.add_argument("--to", type=Path, default=Path("/tmp/train"))
    args = ap.parse_args()
    if args.unpack:
        print(f"{unpack(args.unpack, args.to)} photos in {args.to}")
        return
    quality, fidelity = pack(args.out, args.budget_mb)
    shutil.copytree(SET5, args.out.parent / "Set5" / "x4", dirs_exist_ok=True)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB, HR JPEG quality {quality} "
          f"(4:4:4; {fidelity:.1f} dB against the originals)")


if __name__ == "__main__":
    main()
