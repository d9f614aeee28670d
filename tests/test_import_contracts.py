"""The layers are enforced, not hoped for: every import-linter contract of pyproject.toml is kept (the core
never imports rich nor textual, only the store and the queue write SQL, the layers, lm below pre-inference),
every core package is under the terminal-library contracts, and ruff is clean."""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tcf

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
UI = {"tcf.cli", "tcf.tui"}  # the two layers that draw: everything else is the core


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["name"]: c for c in config["contracts"]}


def _contract(forbidden: str) -> dict:
    return next(c for c in _contracts().values() if c["type"] == "forbidden" and c["forbidden_modules"] == [forbidden])


@pytest.mark.parametrize("forbidden", ["rich", "textual"])
def test_every_core_package_is_forbidden_terminal_libraries(forbidden):
    top_level = {f"tcf.{m.name}" for m in pkgutil.iter_modules(tcf.__path__)} - {"tcf.__main__"}
    sources = set(_contract(forbidden)["source_modules"])
    assert top_level - UI <= sources, "a core package is missing from the contract"
    if forbidden == "rich":
        assert not sources & UI  # the CLI and the TUI are where drawing happens


def _lint(root: Path, contract: str | None) -> subprocess.CompletedProcess:
    linter = Path(sys.executable).with_name("lint-imports")  # installed with the test extras
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    only = ["--contract", contract] if contract else []
    return subprocess.run([str(linter), "--no-cache", *only], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_contract_is_kept():
    r = _lint(ROOT, None)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert f"{len(_contracts())} kept, 0 broken" in r.stdout


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    r = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]


def test_the_core_never_imports_rich():
    r = _lint(ROOT, _contract("rich")["id"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "1 kept, 0 broken" in r.stdout


def test_the_contract_catches_rich_in_the_report_package(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "tcf", tmp_path / "tcf", ignore=shutil.ignore_patterns("__pycache__"))
    render = tmp_path / "tcf" / "report" / "render.py"
    render.write_text(render.read_text().replace("import csv\n", "import csv\n\nfrom rich.text import Text\n", 1))
    r = _lint(tmp_path, _contract("rich")["id"])
    assert r.returncode == 1 and "tcf.report.render -> rich" in r.stdout, r.stdout[-3000:]
