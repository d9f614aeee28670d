"""`tcf queue` as a user meets it: one-line errors with exit code 2 and nothing queued, and the listing."""

from __future__ import annotations

import json
import sqlite3

from helpers import tcf


def _jobs(db) -> int:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]


def test_bad_config_queues_nothing(tmp_path, small_dataset):
    db = tmp_path / "experiments.db"
    good = tmp_path / "good.yaml"
    good.write_text(f"dataset:\n  path: {small_dataset}\nmodel:\n  architecture: pop\n")
    assert tcf("queue", "add", str(good), "--db", str(db), cwd=tmp_path).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"dataset:\n  path: {small_dataset}\nsweep:\n  seed: [1, 2]\ntrain:\n  epoch: 3\n")
    r = tcf("queue", "add", str(bad), "--db", str(db), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {bad}:6: train.epoch: unknown key"]
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"dataset:\n  path: {tmp_path / 'nowhere'}\n")
    r = tcf("queue", "add", str(missing), "--db", str(db), cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "nowhere" in r.stderr
    assert _jobs(db) == 1


def test_queue_commands_name_what_is_wrong(tmp_path, small_dataset):
    db = tmp_path / "experiments.db"
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"dataset:\n  path: {small_dataset}\nmodel:\n  architecture: pop\n")
    r = tcf("queue", "add", str(cfg), "--tag", "a", "--note", "first try", "--priority", "4", "--db", str(db),
            cwd=tmp_path)
    (job_id,) = map(int, r.stdout.split())
    cases = {
        ("queue", "cancel", "99"): "no job with id 99",
        ("queue", "retry"): "give a job ID or --failed",
        ("queue", "retry", str(job_id)): f"job {job_id} is queued; only failed, lost or cancelled",
        ("queue", "edit", str(job_id), "--tag", "two words"): "invalid tag 'two words'",
        ("queue", "ls", "--state", "sleeping"): "--state: unknown state 'sleeping'",
        ("worker", "--gpus", "0,x"): "--gpus: expected 'all', 'cpu' or GPU indices",
    }
    for args, message in cases.items():
        r = tcf(*args, "--db", str(db), cwd=tmp_path)
        assert r.returncode == 2, args
        assert r.stderr.strip().splitlines() == [f"error: {r.stderr.strip().removeprefix('error: ')}"]
        assert message in r.stderr, (args, r.stderr)
    (job,) = json.loads(tcf("queue", "ls", "--json", "--db", str(db), cwd=tmp_path).stdout)
    assert (job["id"], job["state"], job["tags"], job["note"], job["priority"]) == (job_id, "queued", ["a"],
                                                                                   "first try", 4)
    r = tcf("queue", "cancel", str(job_id), "--db", str(db), cwd=tmp_path)
    assert r.returncode == 0
    assert json.loads(tcf("queue", "ls", "--json", "--db", str(db), cwd=tmp_path).stdout)[0]["state"] == "cancelled"
    assert tcf("queue", "rm", str(job_id), "--db", str(db), cwd=tmp_path).returncode == 0
    assert _jobs(db) == 0
