"""The Slurm backend's pure parts: the batch script (one node, several GPUs, several nodes), the sbatch argv with
its dependency graph, and how Slurm's states map onto tcf's. The real cluster runs in tests/e2e/test_slurm.py."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import replace

import pytest

from tcf.config import load_config
from tcf.errors import TcfError
from tcf.jobs import queue as q
from tcf.jobs.slurm import SlurmOptions, SlurmState, _wait_status, batch_script, format_plan, plan, tcf_state
from tcf.store.db import Store


@pytest.fixture
def store(tmp_path, small_dataset) -> Store:
    store = Store(tmp_path / "experiments.db")
    (tmp_path / "exp.yaml").write_text(f"dataset:\n  path: {small_dataset}\nmodel:\n  architecture: pop\n"
                                       "sweep:\n  seed: [1, 2]\n")
    q.add_jobs(store, load_config(tmp_path / "exp.yaml"), mem_bytes=20 << 30)
    return store


def _script_lines(script: str) -> list[str]:
    return script.splitlines()


def test_a_one_gpu_job_is_one_exec_of_the_job_process(store):
    job = q.get_job(store, 1)
    script = batch_script(job, store.path, SlurmOptions("gpu", "lab", "04:00:00", "gpu:1"), 1, python="/venv/py")
    lines = _script_lines(script)
    assert lines[0] == "#!/bin/bash"
    for directive in ("--partition=gpu", "--account=lab", "--time=04:00:00", "--gres=gpu:1", "--nodes=1",
                      "--requeue", "--comment=tcf-job-1:gpu-mem=20.0GiB"):
        assert f"#SBATCH {directive}" in lines
    assert "GPU memory: 20.0 GiB free per GPU (the planner's need)" in script
    folder = store.path.parent / "artifacts" / "jobs" / "job-1"
    assert lines[-1] == f"exec /venv/py -m tcf.jobs.job_main --db {store.path} --job-dir {folder} 1"
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0  # it parses


def test_a_job_of_eight_gpus_spans_two_nodes_of_four_through_srun_torchrun(store):
    job = replace(q.get_job(store, 1), gpus=8)
    script = batch_script(job, store.path, SlurmOptions(gres="gpu:a100:4"), 1, python="/venv/py")
    lines = _script_lines(script)
    assert "#SBATCH --nodes=2" in lines and "#SBATCH --ntasks-per-node=1" in lines  # one torchrun per node
    assert lines[-3] == 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
    assert lines[-2].startswith("rdzv_port=$((20000 + SLURM_JOB_ID % 20000))")
    launch = shlex.split(lines[-1])
    assert launch[:6] == ["exec", "srun", "--kill-on-bad-exit=1", "/venv/py", "-m", "torch.distributed.run"]
    assert {"--nproc_per_node=4", "--nnodes=$SLURM_JOB_NUM_NODES", "--rdzv_id=$SLURM_JOB_ID",
            "--rdzv_backend=c10d", "--rdzv_endpoint=$head_node:$rdzv_port"} <= set(launch)
    assert launch[-7:] == ["-m", "tcf.jobs.job_main", "--db", str(store.path), "--job-dir",
                           str(store.path.parent / "artifacts" / "jobs" / "job-1"), "1"]
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    with pytest.raises(TcfError, match="not a multiple of --gres gpu:3"):
        batch_script(job, store.path, SlurmOptions(gres="gpu:3"), 1)


def test_cpu_ranks_stay_on_one_node(store):
    job = replace(q.get_job(store, 1), gpus=2)
    lines = _script_lines(batch_script(job, store.path, SlurmOptions(), 1, python="py"))
    assert "#SBATCH --nodes=1" in lines and "#SBATCH --cpus-per-task=2" in lines
    assert "--nproc_per_node=2" in lines[-1] and not any("--gres" in ln for ln in lines)


def test_the_plan_keeps_the_dependency_graph(tmp_path, small_dataset):
    from tcf.jobs.queue import _insert

    store = Store(tmp_path / "experiments.db")
    (tmp_path / "exp.yaml").write_text(f"dataset:\n  path: {small_dataset}\nmodel:\n  architecture: pop\n")
    cfg = load_config(tmp_path / "exp.yaml")[0]
    with store.transaction():  # a pre-inference and two jobs after it, as add_jobs makes for a text sweep
        first = _insert(store, "infer", "enc", cfg, {}, "k", 0, [], "", 1, None, [])
        after = [_insert(store, "train", f"t{i}", cfg, {}, None, 0, [], "", 1, None, [first]) for i in range(2)]
    subs, skipped = plan(store, SlurmOptions())
    assert [s.job.id for s in subs] == [first, *after] and skipped == []
    assert subs[0].argv == ["sbatch", "--parsable", str(subs[0].script_path)]
    for s in subs[1:]:
        assert s.argv == ["sbatch", "--parsable", f"--dependency=afterok:<job {first}>", str(s.script_path)]
    text = format_plan(subs, skipped)
    assert all(s.script in text and shlex.join(s.argv) in text for s in subs)
    # once the pre-inference is a Slurm job, a later plan names its id; once it failed, nothing waits on it
    q.submitted(store, first, slurm_id="41", options={}, job_dir="d", log_path="l", attempt=1)
    subs, _ = plan(store, SlurmOptions())
    assert [s.argv[2] for s in subs] == ["--dependency=afterok:41"] * 2
    q.set_slurm_state(store, first, 1, "FAILED", ("failed", "boom"))
    subs, skipped = plan(store, SlurmOptions())
    assert subs == [] and skipped == [f"job {a} not submitted: job {first} is failed" for a in after]


@pytest.mark.parametrize(("slurm", "current", "expected"), [
    ("PENDING", "queued", ("queued", None)),
    ("PENDING", "cancelled", ("queued", None)),  # requeued after a preemption's SIGTERM: it will resume
    ("RUNNING", "queued", ("running", None)),
    ("RUNNING", "cancelled", ("running", None)),  # requeued and started again before its new start is merged
    ("RUNNING", "finished", None),  # it recorded its end and is exiting
    ("RUNNING", "failed", None),
    ("COMPLETING", "running", None),
    ("COMPLETED", "running", ("finished", None)),
    ("CANCELLED", "finished", None),
    ("CANCELLED", "running", ("cancelled", "cancelled in Slurm (Slurm CANCELLED)")),
    ("FAILED", "failed", None),
    ("FAILED", "running", ("lost", "lost: its process ended without recording its end (Slurm FAILED)")),
    ("OUT_OF_MEMORY", "running", ("failed", "out of memory (Slurm OUT_OF_MEMORY)")),
    ("TIMEOUT", "cancelled", ("failed", "reached its time limit (Slurm TIMEOUT); tcf queue retry resumes it")),
    ("NODE_FAIL", "running", ("lost", "lost: its node failed (Slurm NODE_FAIL); tcf queue retry resumes it")),
])
def test_slurm_states_map_onto_tcf_states(slurm, current, expected):
    assert tcf_state(SlurmState(slurm, "None", ""), current, None, "5") == expected


def test_a_job_slurm_forgot_is_lost_and_exit_statuses_read_as_people_say_them():
    assert tcf_state(None, "running", None, "5") == ("lost", "lost: Slurm no longer knows job 5")
    assert tcf_state(None, "finished", None, "5") is None
    assert tcf_state(SlurmState("CANCELLED", "None", ""), "cancelled", "cancelled (SIGTERM)", "5") == (
        "cancelled", "cancelled (SIGTERM)")
    assert [_wait_status(s) for s in ("9", "33280", "0", "2:0", "0:9", "")] == [
        "signal 9", "exit code 130", "", "exit code 2", "signal 9", ""]


@pytest.mark.parametrize(("opts", "flag"), [
    (SlurmOptions(time="tomorrow"), "--time"), (SlurmOptions(partition="gpu;rm"), "--partition"),
    (SlurmOptions(account="a b"), "--account"), (SlurmOptions(gres="mps:1"), "--gres"),
])
def test_options_sbatch_would_refuse_name_their_flag(opts, flag):
    with pytest.raises(TcfError, match=f"^{flag}: "):
        opts.check()
