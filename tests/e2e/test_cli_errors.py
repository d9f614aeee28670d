"""No tracebacks, ever: every usage error of every command prints usage or one `error:` line and exits 2.

The sweep walks the command tree itself, so a command added later is swept too. In this process
(``tcf_here``, the same entry point); one subprocess checks the installed `tcf` script as well.
"""

from __future__ import annotations

import pytest
import torch
import typer
from helpers import tcf, tcf_here

from tcf.cli import app


def _commands(command=None, path=()) -> list[tuple[tuple[str, ...], object]]:
    command = command or typer.main.get_command(app)
    out = [(path, command)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        out += _commands(sub, (*path, name))
    return out


COMMANDS = _commands()


def _no_traceback(r) -> None:
    assert "Traceback" not in r.stderr + r.stdout


def test_the_sweep_sees_every_command():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"run", "results", "plot", "plan", "infer", "worker", "queue add", "queue ls", "data check",
            "data import recbole", "data synth"} <= names


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "tcf")
def test_a_bogus_flag_prints_usage_and_exits_2(tmp_path, path):
    r = tcf_here(*path, "--no-such-flag", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    _no_traceback(r)
    assert "No such option: --no-such-flag" in r.stderr and "Usage: tcf" in r.stderr
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("path", [p for p, c in COMMANDS if hasattr(c, "commands")
                                  or any(p.required for p in c.params)], ids=lambda p: " ".join(p) or "tcf")
def test_no_arguments_prints_usage_and_exits_2(tmp_path, path):
    """Groups print their help; commands with a required argument or option say which is missing."""
    r = tcf_here(*path, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    _no_traceback(r)
    assert "Usage: tcf" in r.stdout + r.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args,says", [
    (("run", "--resume", "abc"), "Invalid value for '--resume'"),
    (("queue", "cancel", "abc"), "Invalid value for 'ID'"),
    (("queue", "add", "--gpus", "0"), "Invalid value for '--gpus'"),
    (("results", "--format", "xml"), "error: --format must be one of"),
    (("queue", "retry"), "error: give a job ID or --failed"),
    (("run", "no-such-config.yaml"), "error: no-such-config.yaml: config file not found"),
])
def test_bad_values_are_one_line(tmp_path, args, says):
    r = tcf_here(*args, cwd=tmp_path)
    assert r.returncode == 2 and says in r.stderr
    _no_traceback(r)


def test_the_installed_command_too(tmp_path):
    bare = tcf(cwd=tmp_path)
    assert bare.returncode == 2 and "Usage: tcf" in bare.stdout and "Traceback" not in bare.stderr
    bogus = tcf("queue", "--bogus", cwd=tmp_path)
    assert bogus.returncode == 2 and "No such option: --bogus" in bogus.stderr and "Traceback" not in bogus.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is there")
def test_a_device_this_machine_lacks_is_one_line_before_anything_is_written(tmp_path, small_dataset):
    config = tmp_path / "exp.yaml"
    config.write_text(f"dataset:\n  path: {small_dataset}\n")
    r = tcf_here("run", str(config), "-S", "train.device=cuda:1", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "error: train.device: cuda:1, but torch sees no CUDA GPU here"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]
