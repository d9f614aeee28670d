"""The ``tcf`` command as a user meets it: exit codes, one-line errors, untouched stores, JSON.

Messages are checked in this process (``tcf_here``: the same entry point, no interpreter start-up); the demo
runs as a real subprocess."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import ROOT, tcf, tcf_here

from tcf import __version__


def _dump(db: Path) -> list[str]:
    with sqlite3.connect(db) as c:
        return list(c.iterdump())


def _config(tmp_path: Path, dataset: Path, name: str = "exp.yaml") -> str:
    p = tmp_path / name
    p.write_text(f"dataset:\n  path: {dataset}\nmodel:\n  architecture: pop\n")
    return str(p)


def _dataset(tmp_path: Path, behaviors: bytes, items: bytes) -> Path:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "behaviors.tsv").write_bytes(b"user_id\titems\n" + behaviors)
    (d / "news.tsv").write_bytes(b"item_id\ttext\n" + items)
    return d


GOOD_ITEMS = b"".join(b"N%d\ttitle number %d\n" % (i, i) for i in range(1, 9))
GOOD_USERS = b"".join(b"U%d\tN1 N2 N3 N4 N5 N%d\n" % (u, 6 + u % 3) for u in range(1, 6))

BAD_INPUTS = {
    "no tab in behaviors": (GOOD_USERS + b"U9 N1 N2\n", GOOD_ITEMS, "behaviors.tsv:7: "),
    "unknown item key": (GOOD_USERS + b"U9\tN1 N5531 N2\n", GOOD_ITEMS,
                         "behaviors.tsv:7: unknown item key 'N5531'"),
    "empty text": (GOOD_USERS, GOOD_ITEMS + b"N9\t\n", "news.tsv:10: "),
    "duplicated item key": (GOOD_USERS, GOOD_ITEMS + b"N3\tagain\n", "news.tsv:10: "),
    "duplicated user": (GOOD_USERS + b"U2\tN1 N2 N3 N4 N5\n", GOOD_ITEMS, "behaviors.tsv:7: "),
    "invalid utf-8": (GOOD_USERS, GOOD_ITEMS + b"N9\tcaf\xe9 \xff\n", "news.tsv:10: "),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_exit_2_store_unchanged(tmp_path, small_dataset, case):
    behaviors, items, expected = BAD_INPUTS[case]
    bad = _dataset(tmp_path, behaviors, items)
    db = tmp_path / "experiments.db"
    ok = tcf_here("run", _config(tmp_path, small_dataset), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    before = _dump(db)

    r = tcf_here("run", _config(tmp_path, bad, "bad.yaml"), cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert expected in lines[0] and str(bad) in lines[0]
    assert _dump(db) == before

    check = tcf_here("data", "check", str(bad), cwd=tmp_path)
    assert check.returncode == 2 and check.stderr.strip() == lines[0]


def test_bad_input_does_not_create_a_store(tmp_path):
    bad = _dataset(tmp_path, GOOD_USERS + b"U9\tN1 N5531 N2\n", GOOD_ITEMS)
    r = tcf_here("run", _config(tmp_path, bad), cwd=tmp_path)
    assert r.returncode == 2
    assert not (tmp_path / "experiments.db").exists()


def test_lenient_skips_and_counts(tmp_path):
    bad = _dataset(tmp_path, GOOD_USERS + b"U9 N1\nU10\tN1 N5531 N2 N3 N4 N5\n", GOOD_ITEMS + b"N3\tagain\n")
    r = tcf_here("data", "check", str(bad), "--lenient", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "duplicate_item 1" in r.stderr and "no_tab 1" in r.stderr and "unknown_item 1" in r.stderr
    assert "users" in r.stdout


def test_config_errors_are_one_line(tmp_path, small_dataset):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"dataset:\n  path: {small_dataset}\ntrain:\n  epoch: 3\n")
    r = tcf_here("run", str(cfg), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {cfg}:4: train.epoch: unknown key"
    r = tcf_here("run", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert r.returncode == 2 and "config file not found" in r.stderr
    assert not (tmp_path / "experiments.db").exists()


def test_results_json_and_db_override(tmp_path, small_dataset, monkeypatch):
    db = tmp_path / "elsewhere" / "my.db"
    db.parent.mkdir()
    monkeypatch.setenv("TCF_DB", str(db))
    r = tcf_here("run", _config(tmp_path, small_dataset), "-S", "eval.ks=[5,20]", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert db.exists() and not (tmp_path / "experiments.db").exists()
    rows = json.loads(tcf_here("results", "--format", "json", "--db", str(db), cwd=tmp_path).stdout)
    (row,) = rows
    assert row["architecture"] == "pop" and row["item_tower"] == "id" and row["status"] == "finished"
    assert row["dataset"] == small_dataset.name
    for k in (5, 10, 20):
        assert 0.0 <= row[f"test_hr@{k}"] <= 1.0 and 0.0 <= row[f"test_ndcg@{k}"] <= row[f"test_hr@{k}"]
    assert row["test_hr@5"] <= row["test_hr@10"] <= row["test_hr@20"]
    empty = tcf_here("results", "--format", "json", "--dataset", "nope", "--db", str(db), cwd=tmp_path)
    assert json.loads(empty.stdout) == []


def test_version_and_bad_format(tmp_path):
    r = tcf_here("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"tcf {__version__}"
    r = tcf_here("results", "--format", "xml", cwd=tmp_path)
    assert r.returncode == 2 and "--format must be one of" in r.stderr


def test_data_commands_round_trip(tmp_path):
    synth = tmp_path / "s"
    assert tcf_here("data", "synth", str(synth), "--users", "200", "--items", "80", cwd=tmp_path).returncode == 0
    warm = tmp_path / "s_5"
    r = tcf_here("data", "filter", str(synth), str(warm), "--min-item-interactions", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    counts: dict[str, int] = {}
    for line in (synth / "behaviors.tsv").read_text().splitlines()[1:]:
        for item in line.split("\t")[1].split():
            counts[item] = counts.get(item, 0) + 1
    kept = {line.split("\t")[0] for line in (warm / "news.tsv").read_text().splitlines()[1:]}
    assert kept == {i for i, c in counts.items() if c >= 5}
    again = tcf_here("data", "synth", str(synth), cwd=tmp_path)
    assert again.returncode == 2  # never overwrites an existing dataset
    shutil.rmtree(warm)


def readme_examples() -> list[tuple[list[str], str]]:
    """Every README example that shows its output: the `tcf` commands of a ```sh block and the ```text block
    right after it (what the last command prints)."""
    readme = (ROOT / "README.md").read_text()
    examples = []
    block = r"((?:(?!```).)*)"  # a code block's text: anything but a fence
    for m in re.finditer(rf"```sh\n{block}```\n\n```text\n{block}```", readme, flags=re.S):
        commands = m.group(1).replace("\\\n", " ").strip().splitlines()
        assert all(c.startswith("tcf ") for c in commands), commands  # nothing but tcf: the test runs it all
        examples.append((commands, m.group(2)))
    return examples


def _masked(text: str) -> str:
    """Output with its metric values (x100, 2 decimals) masked: what must match wherever the test runs."""
    return re.sub(r"[-+]?\d+\.\d\d", "#", text)


# The whole demo pipeline (synthesis, a tokenizer trained, pre-inference, five trainings) in a subprocess: about
# 30 s of CPU alone, minutes on a loaded 2-core machine, where 300 s was not always enough.
DEMO_TIMEOUT_S = 900


def test_readme_examples_print_what_the_readme_shows_and_the_demo_reuses_its_work(tmp_path):
    """The README's examples with output, run as written: the demo (three epochs a run) synthesizes its data and
    encoder, prints a comparison and records five runs; each pivot prints the README's table (its numbers from
    this machine) or its error word for word, and the README's conclusions hold in the numbers. A rerun
    synthesizes nothing and encodes nothing (issue 22, 3 and 7)."""
    examples = readme_examples()
    assert len(examples) >= 3 and examples[0][0][0] == "tcf run -S train.epochs=3"
    for n, (commands, shown) in enumerate(examples):
        for command in commands:
            r = tcf(*shlex.split(command)[1:], cwd=tmp_path, timeout=DEMO_TIMEOUT_S)
            if command.startswith("tcf run"):
                assert r.returncode == 0, r.stderr
                demo = r
        printed = r.stdout if r.returncode == 0 else r.stderr
        assert r.returncode == (2 if shown.startswith("error:") else 0), (command, r.stderr)
        assert _masked(printed) == _masked(shown), (n, command, printed)
        if shown.startswith("error:"):
            assert printed == shown  # an error has no numbers: word for word

    assert "synthesized the demo dataset in data/demo" in demo.stderr and "built the demo text encoder" in demo.stderr
    assert (tmp_path / "data" / "demo" / "behaviors.tsv").exists()
    assert (tmp_path / "data" / "demo-opt" / "tokenizer.json").exists()
    rows = json.loads(tcf("results", "--format", "json", cwd=tmp_path).stdout)
    names = ["demo-pop-id", "demo-sasrec-id", "demo-dssm-id", "demo-sasrec-demo-opt-frozen",
             "demo-sasrec-demo-opt-top1"]
    assert [row["name"] for row in rows] == names
    assert all(row["status"] == "finished" and row["threads"] == 1 for row in rows)
    for row in rows:  # the comparison on stdout shows each run's test HR@10 (x100)
        assert f"{100 * row['test_hr@10']:.2f}" in demo.stdout
    # the README's conclusions: ID-SASRec leads by far, the text towers trail it (fine-tuned above frozen),
    # DSSM and popularity come last
    hr = {row["name"].removeprefix("demo-"): row["test_hr@10"] for row in rows}
    assert hr["sasrec-id"] - hr["sasrec-demo-opt-top1"] > 0.1
    assert hr["sasrec-demo-opt-top1"] > hr["sasrec-demo-opt-frozen"] > hr["dssm-id"] > hr["pop-id"]

    text = [row for row in rows if row["item_tower"] == "text"]
    assert len({row["lm_params"] for row in text}) == 1 and text[0]["lm_params"] > 0
    starts = "SELECT count(*) FROM events WHERE kind = 'range_start'"
    with sqlite3.connect(tmp_path / "experiments.db") as c:  # one encoder, one pre-inference for both
        assert c.execute("SELECT count(*) FROM artifacts WHERE kind = 'latents'").fetchone()[0] == 1
        encoded = c.execute(starts).fetchone()[0]
    assert encoded >= 1
    again = tcf("run", "-S", "train.epochs=1", cwd=tmp_path, timeout=DEMO_TIMEOUT_S)
    assert again.returncode == 0 and "synthesized" not in again.stderr and "built" not in again.stderr
    with sqlite3.connect(tmp_path / "experiments.db") as c:  # the rerun ran no encoder forward pass
        assert c.execute(starts).fetchone()[0] == encoded


def test_results_output_follows_links_and_streams_into_pipes(tmp_path, small_dataset):
    """Reported (issue 17, item 5): `--output` replaced a symlink, a FIFO and, as root, /dev/null by a file."""
    assert tcf_here("run", _config(tmp_path, small_dataset), cwd=tmp_path).returncode == 0
    target = tmp_path / "paper" / "table.md"
    target.parent.mkdir()
    link = tmp_path / "table.md"
    link.symlink_to(target)
    r = tcf_here("results", "--format", "md", "--output", str(link), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and target.read_text().startswith("|") and "pop" in target.read_text()
    r = tcf_here("results", "--format", "csv", "--output", "/dev/null", cwd=tmp_path)
    assert r.returncode == 0 and Path("/dev/null").is_char_device()
    (tmp_path / "out.md").mkdir()
    r = tcf_here("results", "--format", "md", "--output", str(tmp_path / "out.md"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {tmp_path / 'out.md'}: not a regular file")


def test_names_with_control_characters_are_shown_escaped(tmp_path, small_dataset):
    """A run name holding a terminal escape, a carriage return or rich markup is shown as text in every
    table and export (issue 17, item 8)."""
    evil = "pop\x1b[2J\r[bold red]x[/]"
    config = tmp_path / "exp.yaml"
    config.write_text(f"dataset:\n  path: {small_dataset}\nmodel:\n  architecture: pop\nname: {json.dumps(evil)}\n")
    shown = []
    r = tcf_here("run", str(config), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    shown.append(r.stdout + r.stderr)
    table = tcf_here("results", cwd=tmp_path)  # (at 80 columns the name may be cut: only nothing raw)
    assert table.returncode == 0 and "\x1b" not in table.stdout and "\r" not in table.stdout
    for fmt in ("md", "csv", "latex"):
        r = tcf_here("results", "--format", fmt, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        shown.append(r.stdout)
    for text in shown:
        assert "\x1b" not in text and "\r" not in text
        assert "\\x1b[2J\\x0d" in text or "\\textbackslash{}x1b" in text
    assert "[bold red]x[/]" in shown[0] and "[bold red]x[/]" in shown[1]  # markup shown, not applied
    rows = json.loads(tcf_here("results", "--format", "json", cwd=tmp_path).stdout)
    assert rows[0]["name"] == evil  # the data itself is kept as typed


def _wide(tmp_path: Path) -> Path:
    """A dataset whose item file has title, category and brand columns (the sequences of GOOD_USERS)."""
    d = tmp_path / "wide"
    d.mkdir()
    (d / "behaviors.tsv").write_bytes(b"user_id\titems\n" + GOOD_USERS)
    rows = "".join(f"N{i}\tTitle {i}\t{'' if i % 2 else f'Cat {i}'}\tBrand {i}\n" for i in range(1, 9))
    (d / "items.tsv").write_text("item_id\ttitle\tcategory\tbrand\n" + rows)
    return d


def _template_config(tmp_path: Path, dataset: Path, template: str, name: str = "exp.yaml") -> str:
    p = tmp_path / name
    p.write_text(f"dataset:\n  path: {dataset}\n  text_template: {json.dumps(template)}\n"
                 "model:\n  architecture: pop\n")
    return str(p)


def test_text_template_runs_and_is_part_of_the_config(tmp_path):
    wide = _wide(tmp_path)
    check = tcf_here("data", "check", str(wide), "--text-template", "{title}. {category}. {brand}", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "item_id, title, category, brand" in check.stdout and "Title 1. Brand 1" in check.stdout
    for n, template in enumerate(["{title}. {category}. {brand}", "{brand}: {title}"]):
        r = tcf_here("run", _template_config(tmp_path, wide, template, f"t{n}.yaml"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    with sqlite3.connect(tmp_path / "experiments.db") as c:
        rows = c.execute("SELECT config_json, config_hash FROM runs ORDER BY id").fetchall()
    assert [json.loads(cfg)["dataset"]["text_template"] for cfg, _ in rows] == [
        "{title}. {category}. {brand}", "{brand}: {title}"]
    assert rows[0][1] != rows[1][1]


TEMPLATE_ERRORS = {
    # (template, the error after "error: ", for `tcf run` and for `tcf data check --text-template`)
    "unknown column": ("{title}. {colour}", "{items}:1: {key}: no column 'colour' in the item file; its columns "
                       "are item_id, title, category, brand"),
    "unbalanced brace": ("{title", "{where}{key}: unbalanced '{{' at position 0: close it with '}}', or write "
                         "'{{{{' for a literal brace"),
    "positional": ("{0}", "{where}{key}: positional placeholder {{0}} at position 0: name a column, e.g. {{title}}"),
    "attribute": ("{title.__class__}", "{where}{key}: attribute or index access in {{title.__class__}} at position "
                  "0: a placeholder is a column name only"),
    "conversion": ("{title!r}", "{where}{key}: conversion in {{title!r}} at position 0: a placeholder is a column "
                   "name only"),
    "format spec": ("{title:>10}", "{where}{key}: format spec in {{title:>10}} at position 0: a placeholder is a "
                    "column name only"),
}


@pytest.mark.parametrize("case", sorted(TEMPLATE_ERRORS))
def test_text_template_errors_are_one_line_and_write_nothing(tmp_path, case):
    template, expected = TEMPLATE_ERRORS[case]
    wide = _wide(tmp_path)
    items = wide.resolve() / "items.tsv"
    config = _template_config(tmp_path, wide, template)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    r = tcf_here("run", config, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    in_config = expected.format(items=items, key="dataset.text_template", where=f"{config}:3: ")
    assert r.stderr == f"error: {in_config}\n"
    check = tcf_here("data", "check", str(wide), "--text-template", template, cwd=tmp_path)
    assert check.returncode == 2 and check.stdout == ""
    assert check.stderr == f"error: {expected.format(items=items, key='--text-template', where='')}\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no store, no artifacts


def test_a_multi_column_item_file_without_a_template_is_one_line(tmp_path):
    wide = _wide(tmp_path)
    r = tcf_here("run", _config(tmp_path, wide), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == (
        f"error: {wide.resolve() / 'items.tsv'}:1: 4 columns (item_id, title, category, brand): set "
        "dataset.text_template to make each item's text from them, e.g. \"{title}\"\n")
    assert not (tmp_path / "experiments.db").exists()
    check = tcf_here("data", "check", str(wide), cwd=tmp_path)
    assert check.returncode == 2 and "set --text-template to make each item's text" in check.stderr


def _command_paths(command, path=()) -> list[tuple[str, ...]]:
    paths = [path]
    for name, sub in getattr(command, "commands", {}).items():
        paths += _command_paths(sub, (*path, name))
    return paths


def test_help_texts_show_no_flag_types_and_no_doubled_brackets(tmp_path):
    """Reported (issue 22, 8): help showed `--json <bool>` and `tcf queue retry [OPTIONS] [[ID]]`."""
    import typer

    from tcf.cli import app

    paths = _command_paths(typer.main.get_command(app))
    assert ("queue", "retry") in paths and len(paths) > 20
    for path in paths:
        r = tcf_here(*path, "--help", cwd=tmp_path)
        assert r.returncode == 0 and "Usage: tcf" in r.stdout, path
        assert "<bool>" not in r.stdout and "[[" not in r.stdout and "]]" not in r.stdout, (path, r.stdout)
    assert "Usage: tcf queue retry [OPTIONS] [ID]" in tcf_here("queue", "retry", "--help", cwd=tmp_path).stdout


@pytest.mark.parametrize("args", [("results",), ("results", "--format", "json"), ("queue", "ls"),
                                  ("queue", "ls", "--json"), ("plot", "--out", "f.png"), ("logs", "1"),
                                  ("queue", "wait", "1")])
def test_reading_a_mistyped_store_says_none_is_there_and_creates_none(tmp_path, args):
    """Reported (issue 22, 8): a mistyped --db showed an empty queue. Commands that read say no store is there."""
    r = tcf_here(*args, "--db", "experimnets.db", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("error: experimnets.db: no tcf result store there (check --db or TCF_DB; tcf run, tcf queue "
                        "add or tcf worker make one)\n")
    assert list(tmp_path.iterdir()) == []
