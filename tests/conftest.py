"""Shared test setup: deterministic seeds, CPU threads, GPU-test skipping.

Plain helpers that tests call with arguments (the tiny perturbed WorldDiT) live in tests/helpers.py.
"""

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import pytest
import torch

# The test models are tiny: one thread avoids oversubscription (2 cores, several workers)
# and keeps results independent of the machine's core count.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
