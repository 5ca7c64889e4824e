"""The fast CPU path: the same outputs as the fused model, in less time.

``accelerate(model)`` is what ``reprfn upscale`` / ``reprfn.upscale`` run on the CPU by default
(``backend="auto"``). Two engines, each exact to float rounding (max |diff| <= 1e-5 on photos):

* **ONNX Runtime** or **OpenVINO** for whole images (``AutoCPU``): the fused model is exported to
  ONNX once (cached on disk by a digest of its weights) and run by ONNX Runtime with all graph
  optimizations (NCHWc blocked layout, LeakyReLU and residual adds fused into the convs) when
  ``onnx`` and ``onnxruntime`` are installed, else compiled by OpenVINO's CPU plugin in float32
  when ``openvino`` is (``pip install 'reprfn[openvino]'``). ``REPRFN_ENGINE=openvino`` or
  ``onnxruntime`` picks one; both run at this CPU's direct-convolution peak (docs/performance.md),
  ONNX Runtime with less memory. The export is checked against PyTorch in ONNX Runtime when it
  is made, and OpenVINO's compiled model again when it is opened. ``REPRFN_ONNX=0`` leaves both out.
* **PyTorch** (``FastRepRFN``) for tiles, and for everything when ONNX Runtime is missing or
  fails: the fused RepRFN with activations in channels-last (NHWC) layout, where oneDNN's direct
  3x3 conv runs near the machine's peak; LeakyReLU(0.05) fused into each conv, the global
  residual into ``lr_conv``, ESA's ``conv_f(c1) + upsample(c3)`` into ``conv_f`` and the sigmoid
  into ``conv4`` (oneDNN post-ops through ``torch.ops.mkldnn._convolution_pointwise``, the
  kernels ``torch.compile`` itself calls on the CPU); the other adds and products in place; ESA's
  low-resolution branch in channels-last, where max-pooling is several times faster.

Tiled inference stays exact: ESA's sampling window (``ESA.window``, set by ``reprfn.infer``) is
honoured by the PyTorch path, and ``AutoCPU`` hands every windowed call to it (ONNX Runtime's
graph places the upsampling grid by the size of what it is given). What is missing falls back,
never fails: without oneDNN's fused ops the model runs channels-last in eager PyTorch; other
architectures (RFDN, IMDN, the RFN variants) run channels-last; CUDA, bf16/fp16 autocast and
autograd run the plain model.

``FastRepRFN(model, winograd=True)`` runs every 3x3 stride-1 conv through NNPACK's Winograd
F(6x6, 3x3) kernels (2.25x fewer multiplications; bundled with PyTorch's x86 and ARM builds),
and ``esa="folded"`` folds ESA's 1x1 convs algebraically; neither is a default: see
docs/performance.md for the measurements.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .infer import BYTES_PER_PIXEL, OPENVINO_BYTES_PER_PIXEL
from .models.blocks import LRELU_SLOPE, ESA, upsample_in_window
from .errors import UsageError

CL = torch.channels_last


# ----------------------------------------------------------------------------------------------
# Kernels and their availability
# ----------------------------------------------------------------------------------------------


def _pointwise_op() -> Any:
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return getattr(mkldnn, "_convolution_pointwise", None) if mkldnn is not None else None


@functools.lru_cache(maxsize=1)
def fused_ops_available() -> bool:
    """oneDNN's fused conv ops exist and compute what ``F.conv2d`` computes (checked once)."""
    op = _pointwise_op()
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(1, 8, 9, 11, generator=gen).contiguous(memory_format=CL)
        w, b = torch.randn(8, 8, 3, 3, generator=gen) * 0.1, torch.randn(8, generator=gen)
        o = torch.rand(1, 8, 9, 11, generator=gen).contiguous(memory_format=CL)
        with torch.no_grad():
            ref = F.conv2d(x, w, b, padding=1)
            got1 = op(x, w, b, [1, 1], [1, 1], [1, 1], 1, "leaky_relu", [LRELU_SLOPE], "")
            got2 = op.binary(x, o, w, b, [1, 1], [1, 1], [1, 1], 1, "add", 1.0, None, [], "")
            got3 = op(x, w, b, [1, 1], [1, 1], [1, 1], 1, "sigmoid", [], "")
        return bool(
            (got1 - F.leaky_relu(ref, LRELU_SLOPE)).abs().max() < 1e-5
            and (got2 - (ref + o)).abs().max() < 1e-5
            and (got3 - ref.sigmoid()).abs().max() < 1e-5
        )
    except Exception:  # a build without the op, or a changed signature: use the fallback
        return False


@functools.lru_cache(maxsize=1)
def winograd_available() -> bool:
    """NNPACK is compiled in and its 3x3 Winograd conv matches ``F.conv2d`` (checked once)."""
    try:
        if not torch._nnpack_available():  # also initialises NNPACK, which its conv needs
            return False
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(1, 8, 13, 17, generator=gen)
        w, b = torch.randn(8, 8, 3, 3, generator=gen) * 0.1, torch.randn(8, generator=gen)
        with torch.no_grad():
            got = torch._nnpack_spatial_convolution(x, w, b, [1, 1])
            return bool((got - F.conv2d(x, w, b, padding=1)).abs().max() < 1e-4)
    except Exception:
        return False


def _conv(x: Tensor, conv: nn.Conv2d, attr: str = "none", scalars: tuple = ()) -> Tensor:
    """``conv(x)`` followed by a fused unary op (``none``, ``leaky_relu``, ``sigmoid``)."""
    return _pointwise_op()(x, conv.weight, conv.bias, list(conv.padding), list(conv.stride),
                           list(conv.dilation), conv.groups, attr, list(scalars), "")


def _conv_add(x: Tensor, other: Tensor, conv: nn.Conv2d) -> Tensor:
    """``conv(x) + other`` in one oneDNN call (a binary post-op)."""
    return _pointwise_op().binary(x, other, conv.weight, conv.bias, list(conv.padding), list(conv.stride),
                                  list(conv.dilation), conv.groups, "add", 1.0, None, [], "")


def _conv_lrelu(x: Tensor, conv: nn.Conv2d) -> Tensor:
    return _conv(x, conv, "leaky_relu", (LRELU_SLOPE,))


def _winograd(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A 3x3 stride-1 conv through NNPACK (Winograd); any other conv through PyTorch."""
    if conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.groups == 1 and conv.dilation == (1, 1):
        return torch._nnpack_spatial_convolution(x.contiguous(), conv.weight, conv.bias, list(conv.padding))
    return conv(x)


def _upsample(c3: Tensor, esa: ESA, size: tuple[int, int]) -> Tensor:
    if esa.window is None:
        return F.interpolate(c3, size=size, mode="bilinear", align_corners=False)
    return upsample_in_window(c3, size, esa.window)


# ----------------------------------------------------------------------------------------------
# The fast RepRFN
# ----------------------------------------------------------------------------------------------


class FastRepRFN(nn.Module):
    """A fused RepRFN computed with fused, in-place, channels-last kernels (see module doc).

    Holds the fused model as ``self.model`` (weights are shared, not copied): ``parameters()``,
    the ESA modules that tiled inference addresses, ``scale``, ``arch`` and ``config()`` are the
    model's. ``esa="folded"`` computes ESA's tail as ``sigmoid((conv4 . conv_f)(c1) + up(conv4(c3)))``
    (conv_f folded into conv4, conv4 moved before the upsampling, exact by linearity); it is
    slower here and kept for the benchmark.
    """

    def __init__(self, model: nn.Module, *, winograd: bool = False, esa: str = "fused") -> None:
        super().__init__()
        if getattr(model, "arch", "") != "reprfn":
            raise ValueError(f"FastRepRFN runs RepRFN models, not {getattr(model, 'arch', type(model).__name__)!r}")
        if esa not in ("fused", "folded"):
            raise ValueError(f"unknown ESA mode {esa!r}; use 'fused' or 'folded'")
        self.model = model if getattr(model, "form", "train") == "deploy" else model.fuse()
        self.model.eval()
        self.winograd = bool(winograd) and winograd_available()
        self.fused_ops = fused_ops_available()
        self.esa_mode = esa
        self._folded: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    # what the rest of reprfn reads off a model
    @property
    def scale(self) -> int:
        return self.model.scale

    @property
    def in_channels(self) -> int:
        return self.model.in_channels

    @property
    def arch(self) -> str:
        return self.model.arch

    @property
    def form(self) -> str:
        return self.model.form

    def config(self) -> dict[str, Any]:
        return self.model.config()

    def fuse(self) -> nn.Module:
        return self.model.fuse()

    def path(self) -> str:
        """Which kernels this wrapper actually uses, in words."""
        if self.winograd:
            return "winograd (NNPACK 3x3, NCHW, in-place elementwise)"
        if self.fused_ops:
            return "fused oneDNN post-ops, channels-last" + (", folded ESA" if self.esa_mode == "folded" else "")
        return "channels-last eager (fused ops unavailable)"

    def forward(self, x: Tensor) -> Tensor:
        plain = (
            x.device.type != "cpu"
            or x.dtype != torch.float32
            or torch.is_autocast_enabled("cpu")
            or (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.model.parameters())))
        )
        if plain:
            return self.model(x)
        if self.winograd:
            return self._forward_winograd(x)
        if not self.fused_ops:
            return self.model(x.contiguous(memory_format=CL)).contiguous()
        return self._forward_fused(x)

    # -- fused oneDNN post-ops, channels-last -------------------------------------------------

    def _esa_fused(self, esa: ESA, r: Tensor) -> Tensor:
        size = (r.shape[-2], r.shape[-1])
        c1_ = _conv(r, esa.conv1)
        c3 = esa.conv3(F.max_pool2d(_conv(c1_, esa.conv2), kernel_size=7, stride=3))
        if self.esa_mode == "folded":
            w_gf, b_gf, w_g = self._folded_weights(esa)
            low = F.conv2d(c3, w_g)  # conv4 without its bias, at the pooled resolution
            up = _upsample(low, esa, size).contiguous(memory_format=CL)
            pre = _pointwise_op().binary(c1_, up, w_gf, b_gf, [0, 0], [1, 1], [1, 1], 1, "add", 1.0, None, [], "")
            return r.mul_(pre.sigmoid_())
        up = _upsample(c3, esa, size).contiguous(memory_format=CL)
        attention = _conv(_conv_add(c1_, up, esa.conv_f), esa.conv4, "sigmoid")
        return r.mul_(attention)

    def _folded_weights(self, esa: ESA) -> tuple[Tensor, Tensor, Tensor]:
        """conv4 . conv_f as one 1x1 conv (its bias includes conv4's), and conv4's bare weight.

        conv4(up(c3) + conv_f(c1)) = (W4 Wf) c1 + W4 up(c3) + (W4 bf + b4), and
        W4 up(c3) = up(W4 c3) because bilinear weights sum to one and act per channel.
        """
        key = id(esa)
        if key not in self._folded:
            w4, b4 = esa.conv4.weight[:, :, 0, 0], esa.conv4.bias
            wf, bf = esa.conv_f.weight[:, :, 0, 0], esa.conv_f.bias
            w_gf = (w4 @ wf)[:, :, None, None].contiguous()
            self._folded[key] = (w_gf, w4 @ bf + b4, esa.conv4.weight)
        return self._folded[key]

    def _forward_fused(self, x: Tensor) -> Tensor:
        m = self.model
        feat = _conv(x.contiguous(memory_format=CL), m.fea_conv)
        out = feat
        for block in m.blocks:
            h = out
            for rep in block.rep:
                h = _conv_lrelu(h, rep.conv)
            out = self._esa_fused(block.esa, _conv_lrelu(h, block.conv).add_(out))
        y = _conv(_conv_add(out, feat, m.lr_conv), m.upsampler[0])
        return F.pixel_shuffle(y, m.scale).contiguous()

    # -- NNPACK Winograd, NCHW ----------------------------------------------------------------

    def _forward_winograd(self, x: Tensor) -> Tensor:
        m = self.model
        feat = _winograd(x.contiguous(), m.fea_conv)
        out = feat
        for block in m.blocks:
            h = out
            for rep in block.rep:
                h = F.leaky_relu_(_winograd(h, rep.conv), LRELU_SLOPE)
            r = F.leaky_relu_(_winograd(h, block.conv), LRELU_SLOPE).add_(out)
            esa = block.esa
            c1_ = esa.conv1(r)
            c3 = esa.conv3(F.max_pool2d(esa.conv2(c1_).contiguous(memory_format=CL), kernel_size=7, stride=3))
            s = esa.conv_f(c1_).add_(_upsample(c3, esa, (r.shape[-2], r.shape[-1])))
            out = r.mul_(esa.conv4(s).sigmoid_())
        y = _winograd(_winograd(out, m.lr_conv).add_(feat), m.upsampler[0])
        return F.pixel_shuffle(y, m.scale)


class ChannelsLast(nn.Module):
    """Any model run in channels-last layout (the generic fast path: RFDN, IMDN, RFN variants)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    def path(self) -> str:
        return "channels-last eager"

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            return self.model(x)
        return self.model(x.contiguous(memory_format=CL)).contiguous()


# ----------------------------------------------------------------------------------------------
# Whole images through ONNX Runtime, tiles through PyTorch
# ----------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where exported ONNX files are kept: ``$REPRFN_CACHE``, else ``$XDG_CACHE_HOME/reprfn`` or ``~/.cache/reprfn``."""
    if os.environ.get("REPRFN_CACHE"):
        return Path(os.environ["REPRFN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reprfn"


def onnxruntime_available() -> bool:
    """Both optional packages of the ONNX path are installed (``pip install 'reprfn[onnx]'``)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def openvino_available() -> bool:
    """OpenVINO and the ONNX exporter are installed (``pip install 'reprfn[openvino]'``)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "openvino"))


def cached_onnx_export(model: nn.Module, directory: Path | None = None) -> tuple[nn.Module, Path]:
    """The fused model and its ONNX export, made once and kept under ``directory`` (default
    ``cache_dir()``) by a digest of its weights; checked by ONNX Runtime when it is installed."""
    from .export import DEFAULT_OPSET, _model_digest, deploy_copy, export_onnx

    fused = deploy_copy(model)
    directory = Path(directory or cache_dir()) / "onnx"
    path = directory / f"{fused.arch}_x{fused.scale}_{_model_digest(fused, DEFAULT_OPSET, False)}.onnx"
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        export_onnx(fused, path, check=onnxruntime_available())  # atomic; raises on disagreement > 1e-4
    return fused, path


class OpenVinoModel:
    """An ONNX export compiled by OpenVINO's CPU plugin, called like the model (float32 in and out).

    Float32 inference precision is asked for explicitly: on CPUs with bf16 or AMX units OpenVINO
    would otherwise compute in bfloat16, which is not the model's function. One request, guarded by
    a lock (a request runs one inference at a time).
    """

    def __init__(self, path: Path, threads: int, scale: int) -> None:
        import threading

        import openvino as ov

        self.path, self.scale = path, scale
        compiled = ov.Core().compile_model(str(path), "CPU", {
            "INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32"})
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, x: Tensor) -> Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        with self._lock:
            out = self._request.infer({0: arr})[0].copy()
        return torch.from_numpy(out).to(x.device)


def open_openvino(model: nn.Module, threads: int | None = None, directory: Path | None = None) -> OpenVinoModel:
    """The cached ONNX export compiled by OpenVINO, checked against PyTorch on a probe image.

    The probe is a photo crop (``export.image_batch``), not noise: on noise some trained models
    leave the [0, 1] range by orders of magnitude and float rounding alone exceeds any tolerance.
    """
    from .export import image_batch

    fused, path = cached_onnx_export(model, directory)
    engine = OpenVinoModel(path, int(threads or torch.get_num_threads()), fused.scale)
    probe = image_batch(1, 32, 40, fused.in_channels)
    with torch.inference_mode():
        diff = (engine(probe) - fused(probe)).abs().max().item()
    if not diff <= 1e-4:
        raise RuntimeError(f"OpenVINO and PyTorch disagree by {diff:.1e}")
    return engine


def open_onnx_session(model: nn.Module, threads: int | None = None, directory: Path | None = None) -> Any:
    """The fused model exported (checked against PyTorch, cached by a digest of its weights) and
    opened in ONNX Runtime with all graph optimizations (NCHWc layout, conv + activation and conv +
    add fusion), ``threads`` intra-op threads (default: PyTorch's count) and no spinning of idle
    threads, which on a machine whose cores are shared costs more than it saves."""
    import onnxruntime as ort

    from .export import OnnxModel

    _, path = cached_onnx_export(model, directory)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return OnnxModel(session, dict(session.get_modelmeta().custom_metadata_map), path)


class AutoCPU(nn.Module):
    """The default CPU path: whole images through OpenVINO or ONNX Runtime, tiles through PyTorch.

    An ONNX graph places ESA's upsampling grid by the size of what it is given, so it cannot run
    tiles exactly; whenever tiled inference has set an ESA window, and for anything that is not a
    float32 CPU forward without autograd, ``torch_path`` (``FastRepRFN`` or ``ChannelsLast``) runs
    instead. The engine (``engine``: "openvino" or "onnxruntime") is opened on the first
    whole-image call (an export of about 4 s, then cached on disk: ``cache_dir()``); if that fails
    for any reason the PyTorch path is used from then on (``self.onnx_error`` says why).
    """

    def __init__(self, torch_path: nn.Module, directory: Path | None = None, engine: str = "onnxruntime") -> None:
        super().__init__()
        if engine not in ("openvino", "onnxruntime"):
            raise ValueError(f"unknown engine {engine!r}; use 'openvino' or 'onnxruntime'")
        self.torch_path = torch_path
        self.directory = directory
        self.engine = engine
        self._session: Any = None
        self.onnx_error: str | None = None

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["torch_path"], name)

    @property
    def bytes_per_pixel(self) -> int:
        """Peak memory per LR pixel of a whole image (``infer.auto_tile``): OpenVINO's is higher."""
        return OPENVINO_BYTES_PER_PIXEL if self.engine == "openvino" and self.onnx_error is None else BYTES_PER_PIXEL

    def path(self) -> str:
        name = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}[self.engine]
        if self.onnx_error:
            return f"{self.torch_path.path()} ({name} failed: {self.onnx_error})"
        return f"{name} (whole images); {self.torch_path.path()} (tiles)"

    def session(self) -> Any:
        if self._session is None and self.onnx_error is None:
            opener = open_openvino if self.engine == "openvino" else open_onnx_session
            try:
                self._session = opener(self.torch_path.model, directory=self.directory)
            except Exception as exc:  # noqa: BLE001 - any failure means: use PyTorch
                self.onnx_error = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return self._session

    def forward(self, x: Tensor) -> Tensor:
        tiled = any(m.window is not None for m in self.modules() if isinstance(m, ESA))
        if (tiled or x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
                or (torch.is_grad_enabled() and x.requires_grad)):
            return self.torch_path(x)
        session = self.session()
        return self.torch_path(x) if session is None else session(x)


def accelerate(model: Any, device: torch.device | str = "cpu", precision: str = "fp32", *,
               winograd: bool = False, onnx: bool | None = None) -> Any:
    """The fastest equal-output way to run ``model`` on ``device``; the model itself if none applies.

    CPU and fp32 only. The PyTorch path: RepRFN (either form) becomes ``FastRepRFN``, any other
    model is run channels-last. With ONNX Runtime or OpenVINO installed (``onnx=None`` means: if
    one is, and ``REPRFN_ONNX`` is not "0"), whole images go through it (``AutoCPU``; ONNX Runtime
    first, ``REPRFN_ENGINE`` to choose) and tiles through the PyTorch path. Already-accelerated and
    non-torch models (``OnnxModel``) are returned as they are. Outputs equal the model's to float
    rounding (tests/test_fast.py checks <= 1e-4).
    """
    if torch.device(device).type != "cpu" or precision != "fp32" or not isinstance(model, nn.Module):
        return model
    if isinstance(model, (FastRepRFN, ChannelsLast, AutoCPU)):
        return model
    torch_path = FastRepRFN(model, winograd=winograd) if getattr(model, "arch", "") == "reprfn" else ChannelsLast(model)
    engine = choose_engine()
    if onnx is None:
        onnx = os.environ.get("REPRFN_ONNX", "1") != "0" and engine is not None
    if not onnx:
        return torch_path
    return AutoCPU(torch_path, engine=engine or "onnxruntime")


def choose_engine() -> str | None:
    """The whole-image engine: ``$REPRFN_ENGINE`` if set and installed, else ONNX Runtime, else
    OpenVINO, else None (PyTorch only)."""
    installed = {"onnxruntime": onnxruntime_available(), "openvino": openvino_available()}
    wanted = os.environ.get("REPRFN_ENGINE", "")
    if wanted and wanted not in installed:
        raise UsageError(f"REPRFN_ENGINE={wanted!r}: use 'onnxruntime' or 'openvino'")
    if wanted and installed[wanted]:
        return wanted
    return next((name for name, ok in installed.items() if ok), None)
