"""The bundled models: what the README's model table claims is what they measure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import reprfn
from reprfn.checkpoint import bundled_weights, read_state_dict
from reprfn.evaluate import evaluate_dataset
from tests.helpers import shared_path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_set5(scale: int, self_ensemble: bool = False) -> tuple[float, float]:
    """(PSNR, SSIM) on Set5 that the README's table states for the bundled x``scale`` model."""
    label = "same, `--self-ensemble` (8 passes)" if self_ensemble else f"`reprfn_x{scale}.safetensors`"
    row = re.search(rf"^\| x{scale} {re.escape(label)} \| ([\d.]+) / ([\d.]+) \|", README.read_text(), re.M)
    assert row, f"README has no row for the bundled x{scale} model ({label})"
    return float(row.group(1)), float(row.group(2))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bundled_weights_are_small_fused_and_say_how_they_were_trained(scale):
    path = bundled_weights(scale)
    assert path.stat().st_size < 2 * 1024 * 1024
    _, meta = read_state_dict(path)
    assert meta["format"] == "reprfn" and meta["form"] == "deploy" and meta["scale"] == str(scale)
    assert "iterations" in meta.get("training", "")
    model = reprfn.load_model(path)
    assert model.form == "deploy" and sum(p.numel() for p in model.parameters()) < 420_000


@pytest.mark.parametrize("self_ensemble", [False, True], ids=["plain", "self-ensemble"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_readme_set5_figures_are_what_the_bundled_models_measure(scale, self_ensemble):
    folder = shared_path("data", "benchmark", "Set5", f"x{scale}")
    result = evaluate_dataset(reprfn.load_model(bundled_weights(scale)), folder, scale, self_ensemble=self_ensemble)
    psnr, ssim = readme_set5(scale, self_ensemble)
    assert not result.errors and len(result.images) == 5
    assert abs(result.mean("psnr_y") - psnr) <= 0.005 + 1e-9
    assert abs(result.mean("ssim_y") - ssim) <= 0.00005 + 1e-9
