"""Chunk-major pre-inference equals range-major and the whole model, covers every item once, resumes per chunk."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import N_BLOCKS, plan_of, pooled_reference, tiny_opt_with_reference

from tcf.errors import TcfError
from tcf.lm.pooling import POOLINGS
from tcf.preinfer import chunked as chunked_mod
from tcf.preinfer.chunked import chunk_spans, item_order
from tcf.preinfer.latents import LatentStore
from tcf.preinfer.runner import Reporter, run_preinference


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_opt_with_reference(tmp_path_factory.mktemp("opt"))


def run(model, out, spans, chunk_tokens=0, batch=3, **kw):
    path, ids, lengths, keys, _ = model
    return run_preinference(path, ids, lengths, keys, plan_of(spans, batch, chunk_tokens=chunk_tokens), out,
                            device="cpu", dtype=torch.float32, **kw)


def test_chunk_spans_slice_the_order_by_tokens():
    lengths = np.array([1, 2, 2, 3, 5, 8, 8])
    spans = chunk_spans(lengths, 0, 5)
    assert spans == [(0, 3), (3, 4), (4, 5), (5, 6), (6, 7)]  # at most 5 tokens, or one item that has more
    assert chunk_spans(lengths, 3, 100) == [(3, 7)]
    assert chunk_spans(lengths, 7, 5) == []
    order = item_order(np.array([3, 1, 3, 2]))
    assert order.tolist() == [1, 3, 0, 2]  # by length, then row


@pytest.mark.parametrize("chunk_tokens", [1, 23, 10_000])
@pytest.mark.parametrize("spans", [[(0, 4)], [(0, 1), (1, 3), (3, 4)], [(0, 1), (1, 2), (2, 3), (3, 4)]])
def test_chunk_major_equals_range_major_and_the_whole_model(model, tmp_path, spans, chunk_tokens):
    _, _, lengths, keys, reference = model
    kept = sorted({N_BLOCKS, *(s for s, _ in spans[1:2])})  # the final states, and one inner depth when there is one
    by_range = LatentStore(run(model, tmp_path / "range", spans, keep_depths=kept))
    by_chunk = LatentStore(run(model, tmp_path / "chunk", spans, chunk_tokens, keep_depths=kept))
    expected = pooled_reference(lengths, reference)
    for kind in POOLINGS:
        got = by_chunk.read(kind)
        assert (got - expected[kind]).abs().max().item() <= 1e-5, kind
        assert (got - by_range.read(kind)).abs().max().item() <= 1e-5, kind
    for depth in kept:
        assert (by_chunk.read(depth) - by_range.read(depth)).abs().max().item() <= 1e-5, depth
    assert by_chunk.committed() == kept and by_chunk.has_pooled()
    state = json.loads((tmp_path / "chunk" / "state.json").read_text())
    covered = [i for a, b in state["chunks"] for i in range(a, b)]
    assert covered == list(range(len(keys)))  # every item exactly once, chunk after chunk
    assert len(state["chunks"]) == (len(keys) if chunk_tokens == 1 else 1 if chunk_tokens == 10_000 else
                                    len(chunk_spans(np.sort(lengths), 0, chunk_tokens)))
    assert not list((tmp_path / "chunk").glob("*.tmp"))
    assert sorted(p.name for p in (tmp_path / "chunk").glob("boundary-*")) == [f"boundary-{k:03d}.npy" for k in kept]


class Crash(Reporter):
    """Raises in the middle of chunk ``at`` (its second range), and records every range start."""

    def __init__(self, at: int | None = None):
        self.at, self.chunk, self.starts = at, 0, []

    def stage(self, name, total=None, epoch=None):
        assert epoch is None and name.startswith("chunk ")  # a stage of its own, not a training epoch
        self.chunk = int(name.split()[1])

    def range_start(self, i, start, stop, n_items):
        self.starts.append((self.chunk, i, n_items))
        if self.chunk == self.at and i == 1:
            raise RuntimeError("simulated crash")


def test_a_crash_resumes_after_the_last_committed_chunk(model, tmp_path, monkeypatch):
    spans = [(0, 2), (2, 4)]
    clean = LatentStore(run(model, tmp_path / "clean", spans, 30))
    out = tmp_path / "crashy"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(model, out, spans, 30, reporter=Crash(at=3))
    state = json.loads((out / "state.json").read_text())
    assert state["schedule"] == "chunk" and [b for _, b in state["chunks"]][-1] == state["chunk_done"] > 0
    done = state["chunk_done"]

    loads = []
    real = chunked_mod.load_stage
    monkeypatch.setattr(chunked_mod, "load_stage", lambda d, s, e, **kw: loads.append((s, e)) or real(d, s, e, **kw))
    again = Crash()
    run(model, out, spans, 50, reporter=again)  # another chunk size: the order is the same, the cut is not
    state = json.loads((out / "state.json").read_text())
    assert state["chunks"][0][0] == 0 and sum(b - a for a, b in state["chunks"]) == 17
    resumed = [c for c in state["chunks"] if c[0] >= done]
    assert resumed and resumed[0][0] == done  # no committed chunk computed again
    assert sum(n for _, i, n in again.starts if i == 0) == 17 - done
    for kind in POOLINGS:  # other chunk cuts batch the items differently: equal to float rounding
        assert (LatentStore(out).read(kind) - clean.read(kind)).abs().max().item() <= 1e-5
    loads.clear()
    run(model, out, spans, 50)  # finished: nothing loads
    assert loads == []


def test_schedules_do_not_continue_each_others_progress(model, tmp_path):
    out = tmp_path / "lat"
    with pytest.raises(RuntimeError):
        run(model, out, [(0, 2), (2, 4)], 30, reporter=Crash(at=2))
    with pytest.raises(TcfError, match="chunk-major progress .* text_encoder.schedule: chunk"):
        run(model, out, [(0, 2), (2, 4)])
    other = tmp_path / "other"

    class Fail(Reporter):
        def range_end(self, i, seconds):
            raise RuntimeError("after the first range")

    with pytest.raises(RuntimeError):
        run(model, other, [(0, 2), (2, 4)], reporter=Fail())
    with pytest.raises(TcfError, match="range-major progress"):
        run(model, other, [(0, 2), (2, 4)], 30)


def test_two_gloo_ranks_share_every_chunk(model, tmp_path):
    import os
    import subprocess
    import sys

    from helpers import T

    path, ids, lengths, keys, _ = model
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "lengths.npy", lengths)
    script = tmp_path / "job.py"
    script.write_text(f"""
import numpy as np, torch
from tcf.util.dist import init_distributed, shutdown
from tcf.preinfer.planner import Plan, RangePlan
from tcf.preinfer.runner import run_preinference
ctx = init_distributed("cpu")
ranges = [RangePlan(s, e, 0, 0, 2, s == 0, e == {N_BLOCKS}) for s, e in [(0, 1), (1, 3), (3, {N_BLOCKS})]]
plan = Plan(ranges, 1 << 30, 0, {len(keys)}, {T}, "fp32", "fp32", 0, 0, 1.0, 0.0, schedule="chunk", chunk_tokens=30)
run_preinference({str(path)!r}, np.load({str(tmp_path / 'ids.npy')!r}), np.load({str(tmp_path / 'lengths.npy')!r}),
                 {keys!r}, plan, {str(tmp_path / 'out')!r}, device="cpu", dtype=torch.float32, ctx=ctx,
                 keep_depths=[1])
shutdown()
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(29500 + os.getpid() % 190), str(script)], env=env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    two = LatentStore(tmp_path / "out")
    one = LatentStore(run(model, tmp_path / "one", [(0, 1), (1, 3), (3, N_BLOCKS)], 30, batch=2, keep_depths=[1]))
    for k in (*POOLINGS, 1):  # every row written once, by one rank or the other
        assert (two.read(k) - one.read(k)).abs().max().item() <= 1e-5, k
    spans = two.state()["chunks"]
    assert [a for a, _ in spans] == [0, *[b for _, b in spans[:-1]]] and spans[-1][1] == len(keys) and len(spans) > 2
