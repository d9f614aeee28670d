"""Encoders named by Hugging Face repo id through the commands, offline, from a hub cache laid out by hand: the
resolved commit is recorded with the run and in the tokens' and latents' identities, `@revision` picks another
snapshot (and other artifacts), and a missing or pickle-only repo is one error line, exit 2."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import hub_cache_model, make_tiny_opt, tcf, tcf_here

from tcf.data.reader import load_dataset
from tcf.util.artifacts import read_meta

REV_A, REV_B = "a1" * 20, "b2" * 20


@pytest.fixture
def hub(tmp_path, small_dataset, monkeypatch):
    """An offline hub cache (HF_HUB_CACHE) holding org/tiny at two commits (main: REV_B), and a text-SASRec
    config that names it by repo id."""
    cache = tmp_path / "hub-cache"
    model = make_tiny_opt(tmp_path / "opt", load_dataset(small_dataset).item_texts, hidden=16, n_blocks=2)
    hub_cache_model(cache, "org/tiny", REV_A, model, refs=())
    hub_cache_model(cache, "org/tiny", REV_B, model)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = tmp_path / "exp.yaml"
    config.write_text(f"""dataset:
  path: {small_dataset}
model:
  item_tower: text
  embedding_dim: 16
train:
  epochs: 1
  batch_size: 64
text_encoder:
  model: org/tiny
  max_tokens: 12
  latent_dtype: fp32
  gpu_memory_budget: 1GiB
""")
    return tmp_path, config, cache, env


def test_a_run_records_the_resolved_commit_and_a_revision_gets_its_own_artifacts(hub):
    root, config, _, _ = hub
    db = root / "e.db"
    r = tcf_here("run", str(config), "--db", str(db), cwd=root)
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(db) as c:
        stored, inputs = c.execute("SELECT config_json, inputs_json FROM runs").fetchone()
    assert json.loads(stored)["text_encoder"]["model"] == "org/tiny"  # as written: resolved where it is read
    encoder = json.loads(inputs)["text_encoder"]
    assert (encoder["repo"], encoder["revision"]) == ("org/tiny", REV_B)
    assert f"/snapshots/{REV_B}" in encoder["path"]

    [latents_b] = (root / "artifacts" / "latents").glob("[!.]*")
    [tokens_b] = (root / "artifacts" / "tokens").glob("[!.]*")
    assert read_meta(latents_b)["key"]["revision"] == read_meta(tokens_b)["key"]["revision"] == REV_B

    r = tcf_here("infer", str(config), "-S", f"text_encoder.model=org/tiny@{REV_A}", "--db", str(db), cwd=root)
    assert r.returncode == 0, r.stderr
    latents_a = Path(r.stdout.strip().splitlines()[-1])
    assert latents_a != latents_b and read_meta(latents_a)["key"]["revision"] == REV_A
    assert len(list((root / "artifacts" / "tokens").glob("[!.]*"))) == 2  # the same files, another commit

    r = tcf_here("plan", str(config), "-S", f"text_encoder.model=org/tiny@{REV_A}", cwd=root)
    assert r.returncode == 0, r.stderr


def test_a_missing_repo_is_one_line_naming_it_the_cache_and_offline(hub):
    root, config, cache, env = hub
    r = tcf("plan", str(config), "-S", "text_encoder.model=org/absent", cwd=root, env=env)  # a real process
    assert r.returncode == 2 and "Traceback" not in r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: org/absent: ") and str(cache) in line and "offline" in line


def test_a_repo_without_safetensors_is_one_line(hub, tmp_path):
    root, config, cache, _ = hub
    pickled = tmp_path / "pickled"
    shutil.copytree(tmp_path / "opt", pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    (pickled / "pytorch_model.bin").write_bytes(b"never unpickled")
    hub_cache_model(cache, "org/pickled", REV_A, pickled)
    for command in (["plan"], ["infer", "--db", str(root / "p.db")]):
        r = tcf_here(*command, str(config), "-S", "text_encoder.model=org/pickled", cwd=root)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        [line] = r.stderr.strip().splitlines()
        assert line.startswith("error: org/pickled: ") and ".safetensors" in line and "pickled" in line


def test_queued_jobs_resolve_the_repo_id_in_their_own_processes(hub):
    """`tcf queue add` checks the repo (offline, from the cache) and stores the id as written; the worker's job
    processes resolve it alike, and the run records the same commit."""
    root, config, _, env = hub
    db = root / "q.db"
    r = tcf_here("queue", "add", str(config), "--db", str(db), cwd=root)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 2  # the pre-inference, then the training that waits for it
    r = tcf("worker", "--gpus", "cpu", "--exit-when-idle", "--db", str(db), cwd=root, env=env)
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(db) as c:
        states = [s for (s,) in c.execute("SELECT state FROM jobs ORDER BY id")]
        configs = [json.loads(s) for (s,) in c.execute("SELECT config_json FROM jobs ORDER BY id")]
        [inputs] = [json.loads(s) for (s,) in c.execute("SELECT inputs_json FROM runs")]
    assert states == ["finished", "finished"]
    assert all(cfg["text_encoder"]["model"] == "org/tiny" for cfg in configs)
    assert inputs["text_encoder"]["revision"] == REV_B
