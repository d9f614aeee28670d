"""SIGINT/SIGTERM held over a checkpoint write: the write completes, then the signal takes effect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from helpers import ROOT

from tcf.rec.checkpoint import load, save_atomic
from tcf.util.signals import signals_held


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@pytest.fixture
def sigterm_interrupts():
    previous = signal.signal(signal.SIGTERM, _interrupt)  # as `tcf run` does
    yield
    signal.signal(signal.SIGTERM, previous)


class _Signals:
    """Pickles as an empty OrderedDict, sending SIGTERM to this process while torch.save is writing."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return OrderedDict, ()


def test_a_sigterm_during_a_checkpoint_write_interrupts_once_the_file_is_whole(tmp_path, sigterm_interrupts):
    path = tmp_path / "best.pt"
    weights = torch.arange(1000.0)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"a": weights, "signal": _Signals(), "b": weights + 1}, path)
    saved = load(path)
    assert torch.equal(saved["a"], weights) and torch.equal(saved["b"], weights + 1) and saved["signal"] == {}
    assert not path.with_name("best.pt.tmp").exists()
    assert signal.getsignal(signal.SIGTERM) is _interrupt  # the handler is back


def test_a_held_signal_with_the_default_action_still_ends_the_process_after_the_block():
    code = ("import os, signal\nfrom tcf.util.signals import signals_held\nwith signals_held():\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n    print('block done', flush=True)\nprint('after')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGTERM and r.stdout == "block done\n"


def test_no_signal_no_effect(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with signals_held():
        assert signal.getsignal(signal.SIGINT) not in before  # held: tcf's own handler
    # what the process had before, whatever it was (a shell starts background jobs with SIGINT ignored)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
