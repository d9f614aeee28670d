from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tcf.data.synth import synth_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A small synthetic dataset shared by the training tests (read-only)."""
    out = tmp_path_factory.mktemp("data") / "small"
    synth_dataset(out, users=300, items=120, seed=3)
    return out


def tcf(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real ``tcf`` entry point in a subprocess, as a user would."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tcf.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
