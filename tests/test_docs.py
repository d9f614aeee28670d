"""The README is part of the product: its commands and its config reference must stay true."""

import os
import re
import subprocess
from pathlib import Path

import pytest
import typer

from tcf.config import Config
from tcf.report.runs import schema_keys

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    return next(line for line in readme.splitlines() if "pip install -e '.[test]'" in line)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    lines = (ROOT / "README.md").read_text().splitlines()
    test_cmd = _readme_test_command()
    assert test_cmd in ci
    setup = lines[lines.index(test_cmd) - 1]  # the Slurm tests' cluster, installed first
    assert "apt-get install -y -qq slurm-wlm munge" in setup and ci.index(setup) < ci.index(test_cmd)


@pytest.mark.parametrize(("engine", "tui", "ok"), [(1, 0, False), (0, 1, False), (0, 0, True), (2, 1, False)])
def test_the_test_command_runs_and_reports_both_parts(tmp_path, engine, tui, ok):
    """Reported (issue 22, 7): chained with &&, a failing engine suite skipped the TUI tests. The command's test
    part, as .ci/run runs it (set -euo pipefail), with a `python` that fails as told: both parts run, both
    are reported, and the status says whether both passed."""
    command = _readme_test_command()
    tests = command[command.index("{ "):]
    stub = tmp_path / "python"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\ncase "$*" in *--ignore=tests/tui*) exit {engine};; '
                    f"esac\nexit {tui}\n")
    stub.chmod(0o755)
    path = f"{tmp_path}:/usr/bin:/bin"
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", tests], env={**os.environ, "PATH": path},
                       capture_output=True, text=True, timeout=60)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [c.split()[-1] for c in calls] == ["--durations=15", "tests/tui"]
    assert f"engine tests: exit {engine}, TUI tests: exit {tui}" in r.stdout
    assert (r.returncode == 0) == ok


def test_readme_documents_every_config_key():
    readme = (ROOT / "README.md").read_text()
    missing = [k for k in schema_keys(Config, sections=False) if f"| `{k}` |" not in readme]
    assert not missing


def _readme_block(heading: str) -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(heading)
    a = readme.index("```\n", start) + 4
    return readme[a: readme.index("```", a)]


def test_the_layout_map_matches_the_tree():
    """Every module and folder the map names exists, and every module of the packages it maps is named."""
    block = _readme_block("## Layout\n")
    named = set(re.findall(r"\b(\w+\.py|\w+\.tcss|\w+/)(?=[\s,)]|$)", block, flags=re.M))
    pkg = ROOT / "tcf"
    missing = [n for n in named if not list(ROOT.glob(f"**/{n.rstrip('/')}"))]
    assert not missing, f"the map names what is not in the tree: {missing}"
    mapped = [pkg, *(pkg / d for d in ("util", "data", "lm", "preinfer", "rec", "store", "jobs", "report", "tui"))]
    unnamed = [str(p.relative_to(ROOT)) for folder in mapped for p in folder.iterdir()
               if (p.suffix == ".py" and p.name != "__init__.py" and p.name not in named)
               or (p.is_dir() and p.name != "__pycache__" and f"{p.name}/" not in named)]
    assert not unnamed, f"the map leaves out: {unnamed}"


def _cli_rows() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## CLI\n"): readme.index("`--db PATH`", readme.index("## CLI\n"))]
    return [c for row in table.splitlines() if row.startswith("| `tcf ")
            for c in re.findall(r"`(tcf [^`]+)`", row.split(" | ")[0])]


def test_every_command_and_flag_in_the_readme_exists():
    from tcf.cli import app

    root = typer.main.get_command(app)
    assert len(_cli_rows()) >= 20
    for usage in _cli_rows():
        words = usage.replace("\\|", "|").split()[1:]
        command = root
        while words and hasattr(command, "commands") and words[0] in command.commands:  # a group
            command = command.commands[words.pop(0)]
        assert not hasattr(command, "commands"), f"{usage}: no such command"
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-S)\b", " ".join(words)))
        assert flags <= options, f"{usage}: {sorted(flags - options)} not options of the command"
