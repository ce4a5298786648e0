# SPDX-License-Identifier: Apache-2.0
"""Shared paths and tiny configurations for the test suite."""

import os
import socket
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
# The reference outputs; `JEPA_FIXTURES_DIR` points the fixture tests at another folder of the same format.
OFFICIAL = Path(os.environ.get("JEPA_FIXTURES_DIR", SHARED / "fixtures" / "official"))
CIFAR10 = SHARED / "data" / "cifar10"
VIDEO_TINY = SHARED / "data" / "video_tiny"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available (it lives in ../shared beside the checkout)")
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Every test starts without an Accelerate state, as a new process would: Accelerate keeps one per process, and
    a test that makes an `Accelerator` itself (not through a run, which forgets the state it made) would otherwise
    hand its precision to the runs of later tests."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield


@pytest.fixture
def tiny_ijepa_config():
    from modeling_ijepa import IJepaConfig

    return IJepaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        image_size=32,
        patch_size=4,
        predictor_hidden_size=32,
        predictor_num_hidden_layers=2,
    )


def free_port() -> int:
    """A TCP port free on this machine now, for a launcher's rendezvous: the default one (29500) may still be held
    by another run."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
