"""The README is part of the product: its commands and its config reference must stay true."""

from pathlib import Path

from tcf.config import Config
from tcf.report.runs import schema_keys

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    test_cmd = next(line for line in readme.splitlines() if "pip install -e '.[test]'" in line)
    assert test_cmd in ci and test_cmd.endswith("python -m pytest tests/tui")


def test_readme_documents_every_config_key():
    readme = (ROOT / "README.md").read_text()
    missing = [k for k in schema_keys(Config, sections=False) if f"| `{k}` |" not in readme]
    assert not missing
