"""The README is part of the product: its commands and its config reference must stay true."""

from pathlib import Path
from typing import get_args

from tcf.config import Config

ROOT = Path(__file__).resolve().parents[1]


def _keys(model, prefix=""):
    for name, field in model.model_fields.items():
        section = next((a for a in (field.annotation, *get_args(field.annotation)) if hasattr(a, "model_fields")),
                       None)
        if section is not None:
            yield from _keys(section, f"{prefix}{name}.")
        else:
            yield prefix + name


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    test_cmd = next(line for line in readme.splitlines() if "pip install -e '.[test]'" in line)
    assert test_cmd in ci and test_cmd.endswith("python -m pytest tests/tui")


def test_readme_documents_every_config_key():
    readme = (ROOT / "README.md").read_text()
    missing = [k for k in _keys(Config) if f"| `{k}` |" not in readme]
    assert not missing
