"""Fixtures every test folder shares. Shared functions live in ``helpers.py`` (tests/ is on the path)."""

from __future__ import annotations

import os

# the suite runs as two processes on two cores: one torch thread each, in this process (set before tcf and torch
# are imported: tcf.util.threads reads it as the user's pin) and in every `tcf` subprocess a test starts
os.environ["OMP_NUM_THREADS"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tcf.data.synth import synth_dataset  # noqa: E402


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
