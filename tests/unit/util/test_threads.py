"""CPU threads from the cores that are free, pinned by train.threads, the user's OMP_NUM_THREADS first."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT

from tcf.util import threads as th


@pytest.mark.parametrize(("cores", "busy", "ranks", "expected"), [
    (2, 0.0, 1, 2), (2, 0.4, 1, 2),  # an idle machine: every core
    (2, 1.0, 1, 1), (2, 0.6, 1, 1),  # a busy loop on one of two cores: one thread
    (2, 7.5, 1, 1), (1, 0.0, 1, 1),  # always at least one
    (16, 3.2, 2, 6), (4, 0.0, 8, 1),  # shared among the local ranks of a torchrun job
])
def test_threads_from_the_free_cores(cores, busy, ranks, expected):
    assert th.threads_for(cores, busy, ranks) == expected


def test_the_users_omp_num_threads_wins_then_train_threads_then_free_cores(monkeypatch):
    monkeypatch.setattr(th, "USER_OMP", "3")
    assert th.choose_threads(pinned=2) == th.ThreadChoice(3, "OMP_NUM_THREADS", th.usable_cores())
    monkeypatch.setattr(th, "USER_OMP", None)
    assert th.choose_threads(pinned=2).threads == 2 and th.choose_threads(2).source == "train.threads"
    th._free_core_choice.cache_clear()
    auto = th.choose_threads()
    assert auto.source == "free cores" and 1 <= auto.threads <= th.usable_cores()
    assert th.choose_threads() is auto  # once per process: our own first run's load never lowers the second's
    assert "cores free" in auto.describe() and "OMP_NUM_THREADS pins it" in auto.describe()


def test_a_process_started_a_moment_ago_counts_as_busy():
    """The 1-minute load average is slow to see a new load; the /proc/stat sample sees a busy loop at once."""
    if th.cpu_times() is None:
        pytest.skip("no /proc/stat here")
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert th.busy_cores(0.5) >= 0.7
    finally:
        loop.kill()
        loop.wait()


def test_openmp_waits_passively_unless_the_user_chose():
    code = "import os, tcf; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    r = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                       text=True, check=True)
    assert r.stdout.strip() == "PASSIVE"
    r = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "ACTIVE"},
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "ACTIVE"


def test_apply_threads_sets_torchs_count():
    before = torch.get_num_threads()
    try:
        th.apply_threads(th.ThreadChoice(2, "train.threads", 2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
