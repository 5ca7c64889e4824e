"""The fast CPU path (reprfn.fast): equal outputs to the fused model, whole images and tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reprfn
import reprfn.api as api
import reprfn.fast as fast
import reprfn.infer as infer
from reprfn.api import prepare_model
from reprfn.checkpoint import bundled_weights
from reprfn.export import image_batch
from reprfn.fast import ChannelsLast, FastRepRFN, accelerate
from reprfn.infer import run_model
from reprfn.models import build
from tests.helpers import randomize, shared_path

# The documented bound of the default CPU path against the fused model on photos (docs/performance.md,
# reprfn.fast): max |diff| <= 1e-5. Measured 4e-7 (ONNX Runtime) to 5e-6 (Winograd) on these crops.
TOL = 1e-5


@pytest.fixture(scope="module")
def model():
    return reprfn.load_model(bundled_weights(4))


def _diff(a, b):
    return (a - b).abs().max().item()


def _levels(a, b):
    return (a.mul(255).round() - b.mul(255).round()).abs().max().item()


@pytest.mark.parametrize("kw", [{}, {"esa": "folded"}, {"winograd": True}])
def test_fast_paths_equal_the_fused_model(model, kw):
    x = image_batch(2, 61, 97)
    with torch.inference_mode():
        assert _diff(FastRepRFN(model, **kw)(x), model(x)) <= TOL


def test_the_default_path_is_fused_channels_last(model):
    net = accelerate(model)
    assert isinstance(net, FastRepRFN) and net.scale == 4 and net.in_channels == 3 and net.arch == "reprfn"
    if fast.fused_ops_available():
        assert "fused oneDNN" in net.path()
    assert accelerate(net) is net
    assert next(net.parameters()) is next(model.parameters())  # weights shared, not copied


def test_tiles_stay_exact_on_the_fast_path(model):
    x = image_batch(1, 150, 200)
    net = accelerate(model)
    whole = run_model(model, x)
    tiled = run_model(net, x, tile=48)
    assert _diff(tiled, run_model(model, x, tile=48)) <= TOL
    # tiles against the whole image: a claim of tiling ("float noise", one level after rounding), not
    # of the fast path; measured 8e-6 here and 1.2e-5 with the plain model at tiles of 42
    assert _diff(tiled, whole) <= 1e-4 and _levels(tiled, whole) <= 1


def test_fallback_without_fused_ops(model, monkeypatch):
    x = image_batch(1, 40, 44)
    net = FastRepRFN(model)
    net.fused_ops = False
    assert "eager" in net.path()
    with torch.inference_mode():
        assert _diff(net(x), model(x)) <= TOL


def test_availability_checks_survive_a_missing_op(monkeypatch):
    monkeypatch.setattr(fast, "_pointwise_op", lambda: None)
    fast.fused_ops_available.cache_clear()
    try:
        assert fast.fused_ops_available() is False
    finally:
        monkeypatch.undo()
        fast.fused_ops_available.cache_clear()


def test_train_form_and_other_archs():
    x = image_batch(1, 33, 29)
    train = randomize(build("reprfn", scale=2), gain=0.3)
    net = accelerate(train)
    assert isinstance(net, FastRepRFN) and net.form == "deploy"
    with torch.inference_mode():
        assert _diff(net(x), train(x)) <= TOL
        for name in ("rfdn", "imdn", "rfn-rfb3"):
            other = build(name, scale=3)
            wrapped = accelerate(other)
            assert isinstance(wrapped, ChannelsLast) and wrapped.scale == 3
            assert _diff(wrapped(x), other(x)) <= TOL


def test_not_accelerated_off_cpu_fp32(model):
    assert accelerate(model, "cpu", "bf16") is model
    assert accelerate(model, "cuda") is model
    with pytest.raises(ValueError):
        FastRepRFN(build("rfdn"))


def test_grad_and_autocast_run_the_plain_model(model):
    net = accelerate(model)
    x = image_batch(1, 24, 24).requires_grad_(True)
    y = net(x)
    y.mean().backward()
    assert x.grad is not None


def test_upscale_default_backend_equals_torch_backend(model):
    img = (image_batch(1, 45, 60)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    auto = reprfn.upscale(img, model=model, device="cpu")
    plain = reprfn.upscale(img, model=model, device="cpu", backend="torch")
    assert np.abs(auto.astype(int) - plain.astype(int)).max() <= 1
    assert isinstance(prepare_model(model, torch.device("cpu")), FastRepRFN)
    assert prepare_model(model, torch.device("cpu"), backend="torch") is model
    with pytest.raises(ValueError):
        prepare_model(model, torch.device("cpu"), backend="nope")


def test_authors_checkpoint_on_the_fast_path():
    model = reprfn.load_model(shared_path("weights", "official", "reprfn_ntire_x4.pth"))
    x = image_batch(1, 90, 160)
    with torch.inference_mode():
        ref = model(x)
        for kw in ({}, {"winograd": True}):
            got = FastRepRFN(model, **kw)(x)
            assert _diff(got, ref) <= TOL and _levels(got.clamp(0, 1), ref.clamp(0, 1)) <= 1


needs_ort = pytest.mark.skipif(not fast.onnxruntime_available(), reason="onnx / onnxruntime not installed")


@needs_ort
def test_auto_path_uses_onnxruntime_for_whole_images_and_torch_for_tiles(model, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRFN_CACHE", str(tmp_path))
    monkeypatch.setenv("REPRFN_ENGINE", "onnxruntime")
    net = accelerate(model, onnx=True)
    assert isinstance(net, fast.AutoCPU) and net.scale == 4 and net.arch == "reprfn"
    x = image_batch(1, 90, 120)
    whole = run_model(net, x)
    assert net.onnx_error is None and net._session is not None
    assert "ONNX Runtime" in net.path() and list(tmp_path.glob("onnx/reprfn_x4_*.onnx"))
    ref = run_model(model, x)
    assert _diff(whole, ref) <= TOL and _levels(whole, ref) <= 1
    tiled = run_model(net, x, tile=48)  # windows set: PyTorch path, exact
    assert _diff(tiled, run_model(model, x, tile=48)) <= TOL and _levels(tiled, ref) <= 1
    # a second wrapper reuses the cached file
    again = accelerate(model, onnx=True)
    with torch.inference_mode():
        assert _diff(again(x), model(x)) <= TOL


@needs_ort
def test_auto_path_falls_back_when_export_fails(model, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRFN_CACHE", str(tmp_path))

    def broken(*a, **k):
        raise RuntimeError("exporter unavailable")

    monkeypatch.setattr(fast, "open_onnx_session", broken)
    monkeypatch.setattr(fast, "open_openvino", broken)
    net = accelerate(model, onnx=True)
    x = image_batch(1, 40, 40)
    with torch.inference_mode():
        assert _diff(net(x), model(x)) <= TOL
    assert net.onnx_error == "exporter unavailable" and "failed" in net.path()


def test_onnx_can_be_switched_off(model, monkeypatch):
    monkeypatch.setenv("REPRFN_ONNX", "0")
    assert isinstance(accelerate(model), FastRepRFN)
    monkeypatch.setattr(fast, "onnxruntime_available", lambda: False)
    monkeypatch.setattr(fast, "openvino_available", lambda: False)
    monkeypatch.setenv("REPRFN_ONNX", "1")
    assert isinstance(accelerate(model), FastRepRFN)


def test_engine_choice_onnxruntime_first_then_openvino(model, monkeypatch):
    monkeypatch.setenv("REPRFN_ONNX", "1")
    monkeypatch.delenv("REPRFN_ENGINE", raising=False)
    monkeypatch.setattr(fast, "onnxruntime_available", lambda: True)
    monkeypatch.setattr(fast, "openvino_available", lambda: True)
    assert accelerate(model).engine == "onnxruntime"
    monkeypatch.setenv("REPRFN_ENGINE", "openvino")
    assert accelerate(model).engine == "openvino"
    monkeypatch.setattr(fast, "openvino_available", lambda: False)  # asked for, not installed
    assert accelerate(model).engine == "onnxruntime"
    monkeypatch.delenv("REPRFN_ENGINE")
    monkeypatch.setattr(fast, "openvino_available", lambda: True)
    monkeypatch.setattr(fast, "onnxruntime_available", lambda: False)
    assert accelerate(model).engine == "openvino"
    monkeypatch.setenv("REPRFN_ENGINE", "tensorrt")
    with pytest.raises(ValueError, match="REPRFN_ENGINE"):
        accelerate(model)
    with pytest.raises(ValueError, match="engine"):
        fast.AutoCPU(FastRepRFN(model), engine="tensorrt")


@pytest.mark.skipif(not fast.openvino_available(), reason="openvino not installed (pip install -e '.[openvino]')")
def test_openvino_engine_equals_pytorch_and_leaves_tiles_to_torch(model, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRFN_CACHE", str(tmp_path))
    net = fast.AutoCPU(FastRepRFN(model), engine="openvino")
    x = image_batch(2, 61, 97)  # a batch, and a size no multiple of ESA's stride
    whole = run_model(net, x)
    assert net.onnx_error is None and isinstance(net._session, fast.OpenVinoModel)
    assert net.path().startswith("OpenVINO (whole images)")
    ref = run_model(model, x)
    assert _diff(whole, ref) <= TOL and _levels(whole, ref) <= 1
    y = image_batch(1, 45, 50)  # a second size through the same compiled model
    assert _diff(run_model(net, y), run_model(model, y)) <= TOL
    tiled = run_model(net, x, tile=48)  # windows set: PyTorch path, exact
    assert _diff(tiled, run_model(model, x, tile=48)) <= TOL


def test_openvino_engine_asks_auto_tile_for_smaller_tiles(model, monkeypatch):
    """OpenVINO's whole-image peak is ~1.2x PyTorch's: the automatic tile size must know it."""
    monkeypatch.setattr(infer, "available_memory", lambda device: 200 * 2**20)
    ort, ov = (fast.AutoCPU(FastRepRFN(model), engine=e) for e in ("onnxruntime", "openvino"))
    assert infer.model_bytes_per_pixel(ort) == infer.model_bytes_per_pixel(model) == infer.BYTES_PER_PIXEL
    assert infer.model_bytes_per_pixel(ov) == infer.OPENVINO_BYTES_PER_PIXEL > infer.BYTES_PER_PIXEL
    sizes = [infer.auto_tile(2000, 3000, torch.device("cpu"), bytes_per_pixel=infer.model_bytes_per_pixel(n))
             for n in (ort, ov)]
    assert 0 < sizes[1] < sizes[0]
    seen = []

    def record_tile(net, pixels, tile, **kw):
        seen.append(tile)
        return pixels

    monkeypatch.setattr(api, "run_model_pixels", record_tile)
    image = np.zeros((500, 750, 3), np.uint8)  # its x4 output (18 MB) is held beside the forward
    sizes = [infer.auto_tile(500, 750, torch.device("cpu"), bytes_per_pixel=infer.model_bytes_per_pixel(n),
                             held=image.nbytes * 16) for n in (ort, ov)]
    assert 0 < sizes[1] < sizes[0]
    for net in (ort, ov):  # reprfn.upscale's own choice, without running a model
        api.upscale_pixels(net, image)
    assert seen == sizes
    ov.onnx_error = "could not open"  # fell back to PyTorch: PyTorch's figure again
    assert infer.model_bytes_per_pixel(ov) == infer.BYTES_PER_PIXEL


@pytest.mark.skipif(not fast.openvino_available(), reason="openvino not installed (pip install -e '.[openvino]')")
def test_openvino_opens_for_the_authors_checkpoint(tmp_path, monkeypatch):
    # On random noise this model leaves [0, 1] by five orders of magnitude: the check must use a photo.
    monkeypatch.setenv("REPRFN_CACHE", str(tmp_path))
    authors = reprfn.load_model(shared_path("weights", "official", "reprfn_ntire_x4.pth"))
    net = fast.AutoCPU(FastRepRFN(authors), engine="openvino")
    x = image_batch(1, 50, 64)
    with torch.inference_mode():
        assert _diff(net(x), authors(x)) <= TOL
    assert net.onnx_error is None


def test_openvino_disagreement_is_caught_and_falls_back(model, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRFN_CACHE", str(tmp_path))

    class Wrong:
        def __init__(self, path, threads, scale):
            self.scale = scale

        def __call__(self, x):
            return torch.zeros(x.shape[0], x.shape[1], x.shape[2] * self.scale, x.shape[3] * self.scale)

    monkeypatch.setattr(fast, "OpenVinoModel", Wrong)
    monkeypatch.setattr(fast, "cached_onnx_export", lambda m, d=None: (m.fuse().eval(), tmp_path / "m.onnx"))
    net = fast.AutoCPU(FastRepRFN(model), engine="openvino")
    x = image_batch(1, 40, 40)
    with torch.inference_mode():
        assert _diff(net(x), model(x)) <= TOL
    assert "disagree" in net.onnx_error and "OpenVINO failed" in net.path()
