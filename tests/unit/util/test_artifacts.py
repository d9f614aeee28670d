"""Content-addressed artifact folders: found by key, built whole, registered in the store once."""

import json

import pytest

from tcf.errors import TcfError
from tcf.util.artifacts import artifact_hash, build_artifact, find_artifact, read_meta

KEY = {"dataset": "abc", "tokenizer": "opt", "max_tokens": 30}


def test_built_artifact_is_found_by_key_in_any_order(tmp_path):
    assert find_artifact(tmp_path, "tokens", KEY) is None
    with build_artifact(tmp_path, "tokens", KEY, extra={"items": 3}) as tmp:
        (tmp / "ids.bin").write_bytes(b"123")
    found = find_artifact(tmp_path, "tokens", dict(reversed(list(KEY.items()))))
    assert found is not None and (found / "ids.bin").read_bytes() == b"123"
    assert read_meta(found) == {"kind": "tokens", "hash": artifact_hash(KEY), "key": KEY, "items": 3}
    assert find_artifact(tmp_path, "tokens", {**KEY, "max_tokens": 20}) is None


def test_a_failed_build_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), build_artifact(tmp_path, "latents", KEY) as tmp:
        (tmp / "part.bin").write_bytes(b"half")
        raise RuntimeError("disk full")
    assert find_artifact(tmp_path, "latents", KEY) is None
    assert list((tmp_path / "latents").iterdir()) == []


def test_incomplete_leftover_is_replaced(tmp_path):
    stale = tmp_path / "latents" / artifact_hash(KEY)
    stale.mkdir(parents=True)
    (stale / "part.bin").write_bytes(b"half")  # no meta.json: a crash left it
    assert find_artifact(tmp_path, "latents", KEY) is None
    with build_artifact(tmp_path, "latents", KEY) as tmp:
        (tmp / "full.bin").write_bytes(b"full")
    found = find_artifact(tmp_path, "latents", KEY)
    assert sorted(p.name for p in found.iterdir()) == ["full.bin", "meta.json"]


@pytest.mark.parametrize("kind", ["", "../x", "a/b", ".hidden"])
def test_kind_cannot_escape_the_root(tmp_path, kind):
    with pytest.raises(TcfError):
        find_artifact(tmp_path, kind, KEY)


def test_store_registers_artifacts_once(tmp_path):
    from tcf.store.db import Store
    from tcf.store.sql import connection as sql

    store = Store(tmp_path / "e.db")
    run = store.create_run(name="r", config={}, config_hash="h", dataset="d", architecture="sasrec",
                           item_tower="id")
    with build_artifact(tmp_path / "artifacts", "tokens", KEY) as tmp:
        (tmp / "ids.bin").write_bytes(b"1")
    path = find_artifact(tmp_path / "artifacts", "tokens", KEY)
    store.register_artifact("tokens", artifact_hash(KEY), path, read_meta(path), run_id=run)
    store.register_artifact("tokens", artifact_hash(KEY), path, read_meta(path))  # reuse: same row
    rows = list(sql(store).query("SELECT kind, run_id, path, meta_json FROM artifacts"))
    assert [(r["kind"], r["run_id"], r["path"]) for r in rows] == [("tokens", run, str(path))]
    assert json.loads(rows[0]["meta_json"])["key"] == KEY
