import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# The default CPU path exports models to ONNX Runtime (cached under ~/.cache/reprfn); tests that
# upscale with random-weight models would each pay an export. tests/test_fast.py tests that path.
os.environ.setdefault("REPRFN_ONNX", "0")
