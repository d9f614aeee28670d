"""Random bytes and random YAML as datasets and configs (issue 17, item 8): never a traceback, exit 2 with one
`error:` line, nothing written. Seeded and bounded (a case count and a time limit), in this process."""

from __future__ import annotations

import random
import time
from pathlib import Path

import yaml
from helpers import tcf_here

from tcf.config import Config

SECONDS = 12.0  # per test: enough for a few hundred cases on a busy CI core
KEYS = ["name", "seed", "dataset", "model", "train", "eval", "text_encoder", "sweep", "runs", "bogus",
        *(f"{section}.{field}" for section, model in Config.model_fields.items()
          if hasattr(model.annotation, "model_fields") for field in model.annotation.model_fields)]


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(12 if depth < 3 else 8)
    return [lambda: None, lambda: rng.choice([True, False]), lambda: rng.randint(-10**12, 10**12),
            lambda: rng.choice([0, 1, -1, 2**63, 1e308, float("nan"), float("inf"), 1e-300]),
            lambda: "".join(rng.choice("abc:,.-/ \t\x00\x1b\u202eé0189GiB[]{}") for _ in range(rng.randrange(12))),
            lambda: rng.choice(["auto", "cpu", "cuda", "ibce", "text", "sasrec", "0:2,2:4", "8GiB", "/nope"]),
            lambda: rng.choice(["", ".", "..", "~", "/dev/null", "a" * 5000]),
            lambda: rng.randint(0, 4),
            lambda: [_value(rng, depth + 1) for _ in range(rng.randrange(4))],
            lambda: {rng.choice(KEYS): _value(rng, depth + 1) for _ in range(rng.randrange(5))},
            lambda: {rng.choice(KEYS).split(".")[-1]: _value(rng, depth + 1) for _ in range(rng.randrange(5))},
            lambda: [rng.randint(0, 9) for _ in range(rng.randrange(6))]][kind]()


def _config_text(rng: random.Random, dataset: str) -> bytes:
    if rng.random() < 0.15:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
    doc = {rng.choice(KEYS): _value(rng) for _ in range(rng.randrange(8))}
    if rng.random() < 0.7:
        doc.setdefault("dataset", {})
        if isinstance(doc["dataset"], dict):
            doc["dataset"]["path"] = dataset
    text = yaml.safe_dump(doc, allow_unicode=True)
    if rng.random() < 0.2:  # break the YAML itself
        cut = rng.randrange(len(text) + 1)
        text = text[:cut] + rng.choice([":", "- [", "{", "\t", "&a *b", "!!python/object"]) + text[cut:]
    return text.encode("utf-8", "surrogatepass")


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(5)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[at:at] = rng.choice([b"\t", b"\n", b"\x00", b"\xff\xfe", b"\r\n", b"N1\tdup\n", b"U1\tN1\n"])
        elif op == 2:
            del data[at:at + rng.randrange(40)]
        elif op == 3:
            data = data[:at]
        else:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(30)))
    return bytes(data)


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _check(r, cwd: Path, before: set[str], case: str) -> None:
    assert "Traceback" not in r.stderr + r.stdout, case
    assert r.returncode in (0, 2), (case, r.returncode, r.stderr[-500:])
    if r.returncode == 2:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(("error: ", "Error: ")), (case, r.stderr[-500:])
        assert _listing(cwd) == before, case  # nothing written


def test_random_datasets_are_one_line_errors(tmp_path, small_dataset):
    rng, deadline, cases = random.Random(17), time.time() + SECONDS, 0
    good = {name: (small_dataset / name).read_bytes()[:4000] for name in ("behaviors.tsv", "news.tsv")}
    while time.time() < deadline and cases < 400:
        folder = tmp_path / f"d{cases}"
        folder.mkdir()
        for name, data in good.items():
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(300))) if rng.random() < 0.2 else data
            (folder / name).write_bytes(_mutate(rng, raw))
        before = _listing(tmp_path)
        _check(tcf_here("data", "check", str(folder), cwd=tmp_path), tmp_path, before, f"dataset {cases}")
        cases += 1
    assert cases >= 50


def test_random_configs_are_one_line_errors(tmp_path):
    rng, deadline, cases = random.Random(23), time.time() + SECONDS, 0
    missing = str(tmp_path / "no-such-dataset")  # a config that happens to validate still stops at its data
    work = tmp_path / "work"
    work.mkdir()
    while time.time() < deadline and cases < 400:
        config = tmp_path / f"c{cases}.yaml"
        config.write_bytes(_config_text(rng, missing))
        before = _listing(work)
        for command in (["run", "--db", str(work / "e.db")], ["plan"], ["infer", "--db", str(work / "e.db")]):
            r = tcf_here(command[0], str(config), *command[1:], cwd=work)
            _check(r, work, before, f"{command[0]} {config.read_bytes()[:300]!r}")
            assert r.returncode == 2
        cases += 1
    assert cases >= 30
