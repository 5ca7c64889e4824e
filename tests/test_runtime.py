"""The runtime (reprfn.runtime): engines equal to the model, the policy that picks them, the one
ONNX cache and session factory, and the engines' protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reprfn
import reprfn.api as api
import reprfn.runtime.kernels as kernels
import reprfn.runtime.memory as memory
import reprfn.runtime.onnx as rt_onnx
import reprfn.runtime.prepare as rt_prepare
from reprfn.checkpoint import bundled_weights
from reprfn.export import image_batch
from reprfn.models import build
from reprfn.runtime.engines import Engine, FusedCPUEngine, TorchEngine
from reprfn.runtime.info import BYTES_PER_PIXEL, OPENVINO_BYTES_PER_PIXEL, describe
from reprfn.runtime.openvino import OpenVinoEngine, openvino_available
from reprfn.runtime.prepare import Opener, Runner, prepare
from reprfn.runtime.run import run
from tests.helpers import randomize, shared_path

# The documented bound of the default CPU path against the fused model on photos (docs/performance.md):
# max |diff| <= 1e-5. Measured 4e-7 (ONNX Runtime) to 5e-6 (Winograd) on these crops.
TOL = 1e-5
needs_ort = pytest.mark.skipif(not rt_onnx.onnxruntime_available(), reason="onnx / onnxruntime not installed")
needs_ov = pytest.mark.skipif(not openvino_available(), reason="openvino not installed (pip install -e '.[openvino]')")


@pytest.fixture(scope="module")
def model():
    return reprfn.load_model(bundled_weights(4))


def _diff(a, b):
    return (a - b).abs().max().item()


def _levels(a, b):
    return (a.mul(255).round() - b.mul(255).round()).abs().max().item()


def _experimental():
    import benchmarks.kernels_experimental as kx

    if not kx.winograd_available():
        pytest.skip("NNPACK not available")
    return kx


# ------------------------------------------------------------------------------- the fused engine


def test_fused_engine_equals_the_fused_model(model):
    x = image_batch(2, 61, 97)
    with torch.inference_mode():
        assert _diff(FusedCPUEngine(model)(x), model(x)) <= TOL


def test_an_image_seen_from_numpy_runs_with_canonical_strides(model):
    """``permute(2, 0, 1)[None]`` of an HxWx3 array is channels-last with a batch stride of 3,
    which oneDNN ran about 3x slower: the engines restate it (free: a size-1 dimension's stride
    addresses nothing) and the output is the one of the packed tensor, bit for bit."""
    from reprfn.runtime.engines import channels_last

    hwc = image_batch(1, 40, 52)[0].permute(1, 2, 0).contiguous().numpy()
    view = torch.from_numpy(hwc).permute(2, 0, 1)[None]
    assert view.stride() == (3, 1, 52 * 3, 3) and view.is_contiguous(memory_format=torch.channels_last)
    fixed = channels_last(view)
    assert fixed.stride() == (3 * 40 * 52, 1, 52 * 3, 3) and fixed.data_ptr() == view.data_ptr()
    packed = view.contiguous()
    with torch.inference_mode():
        for engine in (FusedCPUEngine(model), FusedCPUEngine(model, "bf16"),
                       TorchEngine(model, "cpu", "fp32", channels_last=True)):
            assert torch.equal(engine(view), engine(packed)), engine.name


def test_winograd_kernel_set_equals_the_fused_model(model):
    """The experimental set of benchmarks/speed.py runs the same forward with other kernels."""
    kx = _experimental()
    x = image_batch(2, 61, 97)
    with torch.inference_mode():
        assert _diff(kx.KernelSetEngine(model, kx.WINOGRAD)(x), model(x)) <= TOL
    with pytest.raises(ValueError, match="kernel operations"):
        kx.KernelSetEngine(build("rfdn"), kx.WINOGRAD)


def test_the_default_path_is_fused_channels_last(model, monkeypatch):
    net = prepare(model)
    assert isinstance(net, Runner) and not isinstance(net, torch.nn.Module)
    assert net.info == describe(model) and (net.info.scale, net.info.in_channels, net.info.arch) == (4, 3, "reprfn")
    assert isinstance(net.tiles, FusedCPUEngine) and net.whole() is net.tiles
    if kernels.fused_ops_available():
        assert "fused oneDNN" in net.describe() and net.tiles.kernels is kernels.ONEDNN
    assert prepare(net) is net
    assert next(net.tiles.model.parameters()) is next(model.parameters())  # weights shared, not copied


def test_tiles_stay_exact_on_the_fast_path(model, monkeypatch):
    x = image_batch(1, 150, 200)
    net = prepare(model)
    whole = run(model, x)
    tiled = run(net, x, tile=48)
    assert _diff(tiled, run(model, x, tile=48)) <= TOL
    # tiles against the whole image: a claim of tiling ("float noise", one level after rounding), not
    # of the fast path; measured 8e-6 here and 1.2e-5 with the plain model at tiles of 42
    assert _diff(tiled, whole) <= 1e-4 and _levels(tiled, whole) <= 1


def test_fallback_without_fused_ops(model, monkeypatch):
    x = image_batch(1, 40, 44)
    monkeypatch.setattr(kernels, "fused_ops_available", lambda: False)
    import reprfn.runtime.engines as engines

    monkeypatch.setattr(engines, "fused_ops_available", lambda: False)
    net = FusedCPUEngine(model)
    assert net.kernels is None and net.name == "torch-channels-last"
    assert "eager" in Runner(describe(model), net).describe()
    with torch.inference_mode():
        assert _diff(net(x), model(x)) <= TOL


def test_availability_checks_survive_a_missing_op(monkeypatch):
    monkeypatch.setattr(kernels, "_pointwise_op", lambda: None)
    kernels.fused_ops_available.cache_clear()
    try:
        assert kernels.fused_ops_available() is False
    finally:
        monkeypatch.undo()
        kernels.fused_ops_available.cache_clear()


def test_train_form_and_other_archs(monkeypatch):
    """What decides the kernels is a property of the model (``kernel_ops``), not its name."""
    x = image_batch(1, 33, 29)
    train = randomize(build("reprfn", scale=2), gain=0.3)
    net = prepare(train)
    assert describe(train).form == "train" and net.tiles.model.form == "deploy"
    with torch.inference_mode():
        assert _diff(net(x), train(x)) <= TOL
        for name in ("rfdn", "imdn", "rfn-rfb3"):
            other = build(name, scale=3)
            wrapped = prepare(other)
            assert not describe(other).kernel_ops and wrapped.tiles.kernels is None and wrapped.info.scale == 3
            assert wrapped.tiles.model is other  # nothing to fold: the model itself, channels-last
            assert _diff(wrapped(x), other(x)) <= TOL
        variant = randomize(build("reprfn-1x1", scale=2), gain=0.3)  # a RepRFN variant: kernel-written too
        assert describe(variant).kernel_ops
        assert _diff(prepare(variant)(x), variant(x)) <= TOL
    assert not describe(build("imdn")).exact_tiles and describe(build("rfdn")).exact_tiles


def test_gpus_and_cpu_fp16_run_the_model_under_autocast(model):
    for device, precision in (("cpu", "fp16"), ("cuda", "fp32"), ("cuda", "bf16"), ("mps", "fp16")):
        net = prepare(model, device, precision)
        assert isinstance(net.tiles, TorchEngine) and net.tiles.model is model and net.whole() is net.tiles
        assert net.tiles.precision == precision and net.device.type == device
        assert net.tiles.channels_last == (device != "cpu")
    with pytest.raises(ValueError, match="backend"):
        prepare(model, backend="nope")
    with pytest.raises(ValueError, match="reprfn model"):
        prepare(object())
    with pytest.raises(ValueError, match="precision 'fp64'"):
        prepare(model, precision="fp64")


def test_grad_and_autocast_run_the_plain_model(model, monkeypatch):
    net = prepare(model)
    x = image_batch(1, 24, 24).requires_grad_(True)
    y = net(x)
    y.mean().backward()
    assert x.grad is not None


def test_eager_kernels_keep_autograd_out_of_place():
    """The model's own forward (the eager set) never writes in place: gradients flow, inputs stay."""
    model = randomize(build("reprfn", scale=2, channels=8, blocks=1, esa_channels=4).fuse())
    x = image_batch(1, 20, 20).requires_grad_(True)
    before = x.detach().clone()
    model(x).square().mean().backward()
    assert x.grad is not None and torch.equal(x.detach(), before)


def test_upscale_default_backend_equals_torch_backend(model):
    img = (image_batch(1, 45, 60)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    auto = reprfn.upscale(img, model=model, device="cpu")
    plain = reprfn.upscale(img, model=model, device="cpu", backend="torch")
    assert np.abs(auto.astype(int) - plain.astype(int)).max() <= 1
    assert isinstance(api.prepare(model, torch.device("cpu")).tiles, FusedCPUEngine)
    torch_runner = api.prepare(model, torch.device("cpu"), backend="torch")
    assert isinstance(torch_runner.tiles, TorchEngine) and torch_runner.tiles.model is model
    with pytest.raises(ValueError):
        api.prepare(model, torch.device("cpu"), backend="nope")


def test_authors_checkpoint_on_the_fast_path():
    model = reprfn.load_model(shared_path("weights", "official", "reprfn_ntire_x4.pth"))
    x = image_batch(1, 90, 160)
    engines = [FusedCPUEngine(model)]
    kx = _experimental()
    engines.append(kx.KernelSetEngine(model, kx.WINOGRAD))
    with torch.inference_mode():
        ref = model(x)
        for engine in engines:
            got = engine(x)
            assert _diff(got, ref) <= TOL and _levels(got.clamp(0, 1), ref.clamp(0, 1)) <= 1


# ----------------------------------------------------------------------------- the engine protocol


@needs_ort
def test_every_engine_follows_the_protocol(model, tmp_path, monkeypatch):
    """Each engine is a plain callable with name, exact_tiles and bytes_per_pixel, none an nn.Module,
    and returns float32 of the model's output shape; only the PyTorch ones claim exact tiles."""
    monkeypatch.setenv("REPRFN_CACHE", str(tmp_path))
    from reprfn.evaluate import Bicubic

    exact = {TorchEngine(model): True, FusedCPUEngine(model): True, rt_onnx.open_onnx(model): False,
             Bicubic(4): True, prepare(model): True}  # a Runner is an engine too: the policy over the others
    if openvino_available():
        from reprfn.runtime.openvino import open_openvino

        exact[open_openvino(model, describe(model))] = False
    x = image_batch(1, 30, 36)
    for engine, exact_tiles in exact.items():
        assert engine.exact_tiles is exact_tiles, engine.name
        assert isinstance(engine, Engine) and not isinstance(engine, torch.nn.Module), engine
        assert isinstance(engine.name, str) and isinstance(engine.bytes_per_pixel, int)
        with torch.inference_mode():
            y = engine(x, None)
            tile = engine(x, (0, 0, 30, 36))  # the window of the whole image: the same output
        assert y.dtype == torch.float32 and y.shape == (1, 3, 120, 144), engine.name
        assert _diff(tile, y) <= TOL and not hasattr(engine, "__getattr__")  # no attribute forwarding


# ------------------------------------------------------------------------------- the engine policy


@needs_ort
def test_onnxruntime_on_request_runs_whole_images_and_torch_tiles(model, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRFN_CACHE", str(tmp_path))
    monkeypatch.setenv("REPRFN_ENGINE", "onnxruntime")
    net = prepare(model)
    assert net.whole_name == "onnxruntime" and net.opened is None  # opened on the first whole image
    assert net.info.scale == 4 and net.info.arch == "reprfn"
    x = image_batch(1, 90, 120)
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(net, "tiles", _recording(net.tiles, calls, "tiles"))
    whole = run(net, x)
    assert net.fallback is None and isinstance(net.opened, rt_onnx.OnnxEngine) and calls == []
    assert "ONNX Runtime" in net.describe() and list(tmp_path.glob("onnx/reprfn_x4_*.onnx"))
    ref = run(model, x)
    assert _diff(whole, ref) <= TOL and _levels(whole, ref) <= 1
    tiled = run(net, x, tile=48)  # windows: the exact PyTorch engine
    assert calls and all(kind == "tiles" and window is not None for kind, window in calls)
    assert _diff(tiled, run(model, x, tile=48)) <= TOL and _levels(tiled, ref) <= 1
    # a second runner reuses the cached file
    monkeypatch.setattr("reprfn.export.export_onnx", lambda *a, **k: pytest.fail("cache not used"))
    again = prepare(model)
    with torch.inference_mode():
        assert _diff(again(x), model(x)) <= TOL
    assert isinstance(again.opened, rt_onnx.OnnxEngine)


def _recording(engine, calls, label):
    """``engine``, noting (label, window) in ``calls`` at every call."""
    class Recording:
        name, exact_tiles, bytes_per_pixel = engine.name, engine.exact_tiles, engine.bytes_per_pixel

        def __call__(self, x, window=None):
            calls.append((label, window))
            return engine(x, window)

    return Recording()


def test_policy_whole_images_to_the_whole_engine_tiles_to_the_exact_one():
    """``run`` hands each forward to the Runner: whole images to the whole-image engine (opened on
    first use, once), every tile with its window to the exact engine."""
    tiny = randomize(build("reprfn", scale=2, channels=8, blocks=1, esa_channels=4)).eval()
    calls: list[tuple[str, object]] = []
    opened: list[int] = []

    class Approximate:  # stands for ONNX Runtime: cannot honour a window
        name, exact_tiles, bytes_per_pixel = "approximate", False, BYTES_PER_PIXEL

        def __call__(self, x, window=None):
            calls.append(("whole", window))
            return TorchEngine(tiny)(x)

    exact = FusedCPUEngine(tiny)
    net = Runner(describe(tiny), _recording(exact, calls, "tiles"), Opener("approximate", BYTES_PER_PIXEL,
                                                                         lambda: opened.append(1) or Approximate()))
    assert net.exact_tiles and net.name == "approximate+torch-fused" and opened == []
    x = image_batch(1, 40, 52)
    whole = run(net, x)
    assert calls == [("whole", None)] and opened == [1]
    calls.clear()
    tiled = run(net, x, tile=18)
    assert calls and all(kind == "tiles" and window is not None for kind, window in calls)
    assert {window[2:] for _, window in calls} == {(40, 52)} and len(calls) == 3 * 3
    assert _diff(tiled, whole) <= 1e-4 and opened == [1]


def test_auto_path_falls_back_when_opening_fails(model, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("exporter unavailable\nsecond line")

    for name in ("onnxruntime", "openvino"):
        net = Runner(describe(model), FusedCPUEngine(model), Opener(name, OPENVINO_BYTES_PER_PIXEL, broken))
        x = image_batch(1, 40, 40)
        assert net.bytes_per_pixel == OPENVINO_BYTES_PER_PIXEL
        with torch.inference_mode():
            assert _diff(net(x), model(x)) <= TOL
        assert net.fallback == "exporter unavailable" and "failed" in net.describe()
        assert net.opened is None and net.whole() is net.tiles
        assert net.bytes_per_pixel == BYTES_PER_PIXEL  # fell back to PyTorch: PyTorch's figure again


def test_whole_images_run_the_fused_engine_unless_another_is_asked_for(model, monkeypatch):
    """The default: one engine for tiles and whole images (nothing exported); ``REPRFN_ENGINE``
    names another for whole images, opened on first use; one not installed falls back, saying why."""
    monkeypatch.delenv("REPRFN_ENGINE", raising=False)
    monkeypatch.setattr(rt_prepare, "onnxruntime_available", lambda: True)
    monkeypatch.setattr(rt_prepare, "openvino_available", lambda: True)
    net = prepare(model)
    assert net.whole_name is None and isinstance(net.tiles, FusedCPUEngine) and net.whole() is net.tiles
    monkeypatch.setenv("REPRFN_ENGINE", "torch")
    assert prepare(model).whole_name is None
    for name in ("openvino", "onnxruntime"):
        monkeypatch.setenv("REPRFN_ENGINE", name)
        assert prepare(model).whole_name == name and prepare(model).opened is None
    monkeypatch.setenv("REPRFN_ENGINE", "openvino")
    assert prepare(model, precision="bf16").whole_name == "openvino-bf16"
    monkeypatch.setattr(rt_prepare, "openvino_available", lambda: False)  # asked for, not installed
    rt_prepare.forget()  # what is installed does not change within a process: runners are kept
    net = prepare(model)
    x = image_batch(1, 24, 30)
    with torch.inference_mode():
        assert _diff(net(x), model(x)) <= TOL
    assert net.fallback == "REPRFN_ENGINE=openvino, but openvino is not installed (pip install 'reprfn[openvino]')"
    monkeypatch.setenv("REPRFN_ENGINE", "tensorrt")
    with pytest.raises(ValueError, match="REPRFN_ENGINE"):
        prepare(model)
    with pytest.raises(ValueError, match="engine"):
        rt_prepare.opener("tensorrt", model, describe(model))


@needs_ov
def test_openvino_engine_equals_pytorch_and_leaves_tiles_to_torch(model, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRFN_CACHE", str(tmp_path))
    info = describe(model)
    net = Runner(info, FusedCPUEngine(model), rt_prepare.opener("openvino", model, info))
    x = image_batch(2, 61, 97)  # a batch, and a size no multiple of ESA's stride
    whole = run(net, x)
    assert net.fallback is None and isinstance(net.opened, OpenVinoEngine)
    assert net.describe().startswith("OpenVINO (whole images)")
    ref = run(model, x)
    assert _diff(whole, ref) <= TOL and _levels(whole, ref) <= 1
    y = image_batch(1, 45, 50)  # a second size through the same compiled model
    assert _diff(run(net, y), run(model, y)) <= TOL
    tiled = run(net, x, tile=48)  # windows: the PyTorch engine, exact
    assert _diff(tiled, run(model, x, tile=48)) <= TOL


def test_openvino_engine_asks_auto_tile_for_smaller_tiles(model, monkeypatch):
    """OpenVINO's whole-image peak is ~1.2x PyTorch's: the automatic tile size must know it."""
    monkeypatch.setattr(memory, "available_memory", lambda device: 200 * 2**20)
    info = describe(model)
    ort, ov = (Runner(info, FusedCPUEngine(model), rt_prepare.opener(name, model, info))
               for name in ("onnxruntime", "openvino"))
    assert ort.bytes_per_pixel == BYTES_PER_PIXEL == prepare(model, backend="torch").bytes_per_pixel
    assert ov.bytes_per_pixel == OPENVINO_BYTES_PER_PIXEL > BYTES_PER_PIXEL
    sizes = [memory.auto_tile(2000, 3000, torch.device("cpu"), bytes_per_pixel=n.bytes_per_pixel) for n in (ort, ov)]
    assert 0 < sizes[1] < sizes[0]
    seen = []

    def record_tile(net, pixels, tile, **kw):
        seen.append(tile)
        return pixels

    monkeypatch.setattr(api, "run_pixels", record_tile)
    image = np.zeros((500, 750, 3), np.uint8)  # its x4 output (18 MB) is held beside the forward
    sizes = [memory.auto_tile(500, 750, torch.device("cpu"), bytes_per_pixel=n.bytes_per_pixel,
                              held=image.nbytes * 16) for n in (ort, ov)]
    assert 0 < sizes[1] < sizes[0]
    for net in (ort, ov):  # reprfn.upscale's own choice, without running a model
        api.upscale_pixels(net, image)
    assert seen == sizes and ort.opened is None and ov.opened is None  # nothing was opened to choose


@needs_ov
def test_openvino_opens_for_the_authors_checkpoint(tmp_path, monkeypatch):
    # On random noise this model leaves [0, 1] by five orders of magnitude: the check must use a photo.
    monkeypatch.setenv("REPRFN_CACHE", str(tmp_path))
    authors = reprfn.load_model(shared_path("weights", "official", "reprfn_ntire_x4.pth"))
    info = describe(authors)
    net = Runner(info, FusedCPUEngine(authors), rt_prepare.opener("openvino", authors, info))
    x = image_batch(1, 50, 64)
    with torch.inference_mode():
        assert _diff(net(x), authors(x)) <= TOL
    assert net.fallback is None and isinstance(net.opened, OpenVinoEngine)


def test_openvino_disagreement_is_caught_and_falls_back(model, tmp_path, monkeypatch):
    import reprfn.runtime.openvino as rt_openvino

    class Wrong:
        name, exact_tiles, bytes_per_pixel = "openvino", False, OPENVINO_BYTES_PER_PIXEL

        def __init__(self, path, info, threads=None):
            self.scale = info.scale

        def __call__(self, x, window=None):
            return torch.zeros(x.shape[0], x.shape[1], x.shape[2] * self.scale, x.shape[3] * self.scale)

    monkeypatch.setattr(rt_openvino, "OpenVinoEngine", Wrong)
    monkeypatch.setattr(rt_openvino, "cached_export", lambda m, **k: tmp_path / "m.onnx")
    info = describe(model)
    net = Runner(info, FusedCPUEngine(model), rt_prepare.opener("openvino", model, info))
    x = image_batch(1, 40, 40)
    with torch.inference_mode():
        assert _diff(net(x), model(x)) <= TOL
    assert "disagree" in net.fallback and "OpenVINO failed" in net.describe()


# ---------------------------------------------------------------- the ONNX cache and session factory


@needs_ort
def test_one_export_per_digest_reused_by_every_caller(tmp_path, monkeypatch):
    """The auto path, --backend onnxruntime and OpenVINO read one file per (weights, options)."""
    import reprfn.export as export

    monkeypatch.setenv("REPRFN_CACHE", str(tmp_path))
    tiny = randomize(build("reprfn", scale=2, channels=8, blocks=1, esa_channels=4)).eval()
    exports = []
    original = export.export_onnx
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: exports.append(a[1]) or original(*a, **k))
    first = rt_onnx.cached_export(tiny)
    assert first.parent == tmp_path / "onnx" and first.name.startswith("reprfn_x2_") and exports == [first]
    assert rt_onnx.cached_export(tiny.fuse()) == first  # the train form and its deploy form: one file
    assert prepare(tiny, backend="onnxruntime").tiles.path == first
    if openvino_available():
        from reprfn.runtime.openvino import open_openvino

        assert open_openvino(tiny, describe(tiny)).path == first
    assert exports == [first]
    fp16 = rt_onnx.cached_export(tiny, fp16=True)
    changed = randomize(build("reprfn", scale=2, channels=8, blocks=1, esa_channels=4), seed=1)
    other = rt_onnx.cached_export(changed)
    assert fp16.name.endswith("_fp16.onnx") and len({first, fp16, other}) == 3 and exports == [first, fp16, other]
    first.write_bytes(first.read_bytes()[:100])  # truncated by hand: exported again when opened
    engine = rt_onnx.open_onnx(tiny)
    assert engine.path == first and exports[-1] == first and len(exports) == 4


@needs_ort
def test_session_factory_options(tmp_path):
    """One place sets ONNX Runtime's options: all graph optimizations, errors only, no spinning."""
    import onnxruntime as ort

    tiny = randomize(build("reprfn", scale=2, channels=8, blocks=1, esa_channels=4)).eval()
    path = rt_onnx.cached_export(tiny, directory=tmp_path)
    for kw, spinning in (({}, "0"), ({"spinning": True}, "1")):
        opts = rt_onnx.ort_session(path, threads=1, **kw).get_session_options()
        assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert opts.intra_op_num_threads == 1 and opts.log_severity_level == 3
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == spinning
    default = rt_onnx.OnnxEngine.from_file(path).session.get_session_options()  # what every engine opens
    assert default.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert default.intra_op_num_threads == torch.get_num_threads()
