"""The flags of every ``reprfn`` subcommand, and which function runs it."""

from __future__ import annotations

import argparse

from .. import __version__
from ..models import names
from ..runtime.hardware import PRECISIONS
from .commands import cmd_export, cmd_fuse, cmd_info, cmd_models, cmd_profile, cmd_serve, cmd_train, cmd_upscale
from .evaluation import cmd_eval

PRECISION_HELP = ("auto: bf16 on CPUs where it pays (AMX, or AVX512-BF16 with a measured gain), fp16 on CUDA/MPS, "
                  "else fp32. bf16 ran 3-4x faster than fp32 on CPUs with AMX and costs about 0.01 dB "
                  "(docs/performance.md); fp16 is for GPUs")


def _add_load_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", choices=names(), help="architecture, when the file cannot tell (RFN variants)")
    p.add_argument("--scale", "-s", type=int, choices=(2, 3, 4), help="expected scale (checked against the file)")
    p.add_argument("--data-range", type=float,
                   help="native input range of the weights (default: from the file; 255 for RFDN files, else 1)")


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
    p.add_argument("--meta", action="append", metavar="KEY=VALUE",
                   help="extra metadata to store, e.g. --meta training='...' (repeatable)")
    _add_load_flags(p)
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser("eval", help="PSNR/SSIM on benchmark folders (see docs/evaluation.md)")
    p.add_argument("-w", "--weights", action="append",
                   help="checkpoint in any supported layout, a model name (reprfn models), or 'bicubic' "
                        "(default: the bundled model); "
                        "repeatable: each is evaluated and becomes a column of --report")
    p.add_argument("-d", "--dir", dest="dirs", action="append", required=True, metavar="DIR",
                   help="a folder with HR/ and LR/, or a folder of HR images; repeatable")
    p.add_argument("--self-ensemble", action="store_true", help="average the 8 flips/rotations (x8 time)")
    p.add_argument("--tile", type=int, metavar="N",
                   help="process tiles of N LR pixels (approximate: ESA sees one tile)")
    p.add_argument("--grey-as-y", dest="grey_as_rgb", action="store_false",
                   help="measure greyscale images on themselves (MATLAB scripts) instead of as 3 equal "
                        "channels (the default, the convention of the published figures)")
    p.add_argument("--save-dir", metavar="D", help="save SR images as D/<dataset folder>/<name>.png")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--report", metavar="FILE.html",
                   help="write a self-contained HTML report: crops where the models differ, a "
                        "before/after slider, the scores, PSNR against params/MACs/CPU time")
    p.add_argument("--device", choices=("cpu", "cuda", "mps", "auto"), default="auto",
                   help="default: cuda, then mps, when available")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default: the protocol's exact numbers), or what upscale runs in another precision, "
                        "to measure what it costs")
    _add_load_flags(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("upscale", help="upscale images or videos with the bundled model (or -w WEIGHTS)")
    p.add_argument("-i", "--input", dest="inputs", nargs="+", required=True, metavar="INPUT",
                   help="image or video files, folders or globs")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (one image input: .png .jpg .jpeg .webp .bmp .tif .tiff; one video input: "
                        ".mp4 .mkv .mov .m4v .webm) or folder (created)")
    p.add_argument("-s", "--scale", type=int, choices=(2, 3, 4), help="upscaling factor (default 4, or the model's)")
    p.add_argument("-w", "--weights", help="checkpoint in any supported layout or a model name (reprfn models; "
                                           "default: the bundled model)")
    p.add_argument("--tile", default="auto",
                   help="auto (from free memory), 0 (whole image) or a tile size in LR pixels")
    p.add_argument("--tile-pad", type=int, default=48, metavar="P", help="context pixels around each tile (default 48)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="auto: cuda, then mps, then the cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime"), default="auto",
                   help="auto: the fastest path with equal outputs (CPU: the fused channels-last PyTorch engine; "
                        "REPRFN_ENGINE=onnxruntime|openvino for whole images); "
                        "torch: the model in plain eager PyTorch; onnxruntime: ONNX Runtime on the CPU")
    p.add_argument("--suffix", default="", help="added to output file names, e.g. _x4")
    p.add_argument("--ext", choices=("auto", "png", "jpg", "webp"), default="auto",
                   help="output format (auto: as the input)")
    p.add_argument("--recursive", action="store_true",
                   help="descend into sub-folders of folder inputs, mirrored in OUT")
    p.add_argument("--skip-existing", action="store_true", help="leave outputs that already exist")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse inputs above N pixels (decompression-bomb guard; 0 lifts it)")
    p.add_argument("--crf", type=int, default=18, metavar="N",
                   help="videos: constant quality, lower is better (default 18; 0 lossless with x264)")
    p.add_argument("--codec", default="libx264", metavar="NAME",
                   help="videos: the encoder (default libx264; e.g. libx265, libvpx-vp9, libsvtav1, ffv1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("export", help="export the fused model to ONNX or ncnn (checked against PyTorch) or TorchScript")
    p.add_argument("-w", "--weights", help="checkpoint in any supported layout or a model name (reprfn models; "
                                           "default: the bundled model)")
    p.add_argument("-s", "--scale", type=int, choices=(2, 3, 4), help="scale of the bundled model (default 4)")
    p.add_argument("-o", "--output", required=True,
                   help="model.onnx, model.pt for TorchScript, or NAME / NAME.param for ncnn (NAME.param + NAME.bin)")
    p.add_argument("--format", choices=("auto", "onnx", "torchscript", "ncnn"), default="auto",
                   help="output format (auto: from the suffix of -o)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--fp16", action="store_true", help="float16 weights and compute, float32 input/output "
                                                        "(ncnn: float16 weights in the .bin)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("train", help="train a model from folders of HR images (see configs/)")
    p.add_argument("-c", "--config", required=True, help="YAML config, e.g. configs/reprfn_x4.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (checkpoints, logs, weights)")
    p.add_argument("--resume", metavar="auto|PATH", help="continue from RUN_DIR/last.ckpt (auto) or a checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("profile", help="params, MACs, activations, convs (NTIRE counter), peak memory, runtime")
    p.add_argument("model", metavar="MODEL_NAME|WEIGHTS",
                   help=f"an architecture ({', '.join(names())}) or a checkpoint")
    p.add_argument("--input", default="3x180x320", metavar="CxHxW",
                   help="LR input size (default 3x180x320: 720p out at x4)")
    p.add_argument("--form", choices=("deploy", "train"), default="deploy",
                   help="deploy (RepBlocks fused into 3x3 convs; the default) or train (the training form)")
    p.add_argument("--mode", choices=("branches", "online"), default=None,
                   help="RepBlocks of the training form (--form train): nine branches (the paper's; the default) "
                        "or online fusion")
    p.add_argument("--runtime", action="store_true", help="also time forwards (eager, and the default upscale path)")
    p.add_argument("--runs", type=int, default=None, help="timed runs for --runtime (median reported; default 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first, for --runtime (default 2)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="the precision --runtime times the default upscale path in, beside the eager fp32 model "
                        "(default fp32; auto: what upscale picks on this machine; counts are always fp32)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    _add_load_flags(p)
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("serve", help="a local web page (and HTTP API) that upscales images")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    p.add_argument("-w", "--weights", help="checkpoint or model name (reprfn models) for its scale; "
                                           "the bundled models for the others")
    from ..serve import MAX_PIXELS, MAX_QUEUE

    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, metavar="N",
                   help=f"largest input image, in pixels (default {MAX_PIXELS:,}); larger ones are answered 413")
    p.add_argument("--max-queue", type=int, default=MAX_QUEUE, metavar="N",
                   help=f"uploads that may wait while one is upscaled (default {MAX_QUEUE}); more are answered 503")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("models", help="the models known by name (-w NAME): bundled, or downloaded on request")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)
    return parser

