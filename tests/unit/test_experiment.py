"""What a run records of its inputs, and what a resume checks against it (issue 17, items 1-2)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import make_tiny_opt

from tcf.config import load_config
from tcf.data.reader import load_dataset
from tcf.errors import TcfError
from tcf.experiment import check_inputs, run_inputs


def test_a_changed_encoder_or_item_file_is_named_and_a_copy_elsewhere_is_not(tmp_path, small_dataset):
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    model = make_tiny_opt(tmp_path / "opt", load_dataset(data).item_texts, hidden=16, n_blocks=2)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"dataset:\n  path: {data}\nmodel:\n  item_tower: text\ntext_encoder:\n  model: {model}\n")
    config = load_config(cfg)[0].resolved()
    run = {"id": 7, "inputs": run_inputs(config, model)}
    assert set(run["inputs"]) == {"dataset/behaviors.tsv", "dataset/news.tsv", "text_encoder"}
    check_inputs(run, run_inputs(config, model))  # unchanged: accepted

    settings = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**settings, "dropout": 0.5}))
    with pytest.raises(TcfError, match=f"{model}: changed since run 7 started \\(text_encoder\\)"):
        check_inputs(run, run_inputs(config, model))
    (model / "config.json").write_text(json.dumps(settings))

    news = data / "news.tsv"
    news.write_text(news.read_text().replace("\t", "\t!", 1))
    with pytest.raises(TcfError, match=f"{news}: changed since run 7 started"):
        check_inputs(run, run_inputs(config, model))
    with pytest.raises(TcfError, match="recorded before tcf fingerprinted"):
        check_inputs({"id": 3, "inputs": {}}, run["inputs"])


def test_the_default_protocol_is_the_plain_leave_one_out(tmp_path, small_dataset):
    """eval.protocol full (the default) trains and tests on exactly what preprocessing alone gives: no item held
    out, no user dropped, the same ids and popularity; its result rows say full."""
    from tcf.data.prepare import prepare
    from tcf.data.reader import load_dataset
    from tcf.experiment import prepared_data, run_experiment

    config = tmp_path / "exp.yaml"
    config.write_text(f"dataset:\n  path: {small_dataset}\n")
    (cfg,) = load_config(config, ["model.architecture=pop"])
    assert cfg.eval.protocol == "full"
    got = prepared_data(cfg)
    want = prepare(load_dataset(small_dataset), min_seq_len=cfg.dataset.min_seq_len,
                   max_seq_len=cfg.dataset.max_seq_len)
    assert got.item_keys == want.item_keys and got.user_keys == want.user_keys
    for name in ("seqs", "lengths", "popularity"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    (cold,) = load_config(config, ["model.architecture=pop", "eval.protocol=cold"])
    assert prepared_data(cold).n_items == want.n_items and not np.array_equal(prepared_data(cold).seqs, want.seqs)
    result = run_experiment(cfg, tmp_path / "e.db")
    assert result.protocol == "full" and all(v is not None for v in result.metrics.values())
