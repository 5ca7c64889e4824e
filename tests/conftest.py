from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _auto_is_fp32_here(monkeypatch):
    """``--precision auto`` is bf16 on CPUs where it pays (AMX, or a measured gain) and fp32 on
    others, and the machines that run this suite differ: the suite holds the default path to the
    exact fp32 guarantee everywhere by answering "bf16 does not pay"; tests/test_precision.py
    checks both answers (and bf16 itself)."""
    import reprfn.runtime.hardware as hardware

    monkeypatch.setattr(hardware, "cpu_bf16_pays", lambda: False)


@pytest.fixture(autouse=True)
def _fresh_runners():
    """Each test prepares its own runners: the policy reads the environment and the installed
    engines, which tests change (``runtime.prepare`` keeps runners across calls otherwise)."""
    from reprfn.runtime.prepare import forget

    forget()
    yield
    forget()


@pytest.fixture(scope="session")
def engine_cache(tmp_path_factory) -> Path:
    """One export cache for the whole run: each bundled model is exported once, not once a test."""
    return tmp_path_factory.mktemp("reprfn-cache")


@pytest.fixture
def default_engine(monkeypatch, engine_cache) -> list:
    """The CPU engine ``--backend auto`` picks for a user with no REPRFN_* variables set.

    Returns the list of runners ``reprfn.api.prepare`` handed out during the test, so the test
    can check which engine actually ran (``tests.helpers.assert_default_engine_ran``).
    """
    import reprfn.api as api

    monkeypatch.delenv("REPRFN_ENGINE", raising=False)
    monkeypatch.setenv("REPRFN_CACHE", str(engine_cache))
    prepared: list = []
    original = api.prepare

    def recording(*args, **kwargs):
        net = original(*args, **kwargs)
        prepared.append(net)
        return net

    monkeypatch.setattr(api, "prepare", recording)
    return prepared
