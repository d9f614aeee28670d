"""Fixtures every test folder shares. Shared functions live in ``helpers.py`` (tests/ is on the path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tcf.data.synth import synth_dataset


def pytest_configure(config: pytest.Config) -> None:
    # the suite runs as two processes on two cores: torch's default of one thread per core would make
    # each process spin against the other (and CPU results depend on the thread count)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A small synthetic dataset shared by the training tests (read-only)."""
    out = tmp_path_factory.mktemp("data") / "small"
    synth_dataset(out, users=300, items=120, seed=3)
    return out
