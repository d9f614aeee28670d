"""What a run records of its inputs, and what a resume checks against it (issue 17, items 1-2)."""

from __future__ import annotations

import json
import shutil

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


# Test metrics of runs on the shared small dataset (300 users, 120 items, seed 3), measured at commit c090fd0,
# before evaluation protocols existed: one torch thread on a CPU, with the overrides of _TODAY below.
_TODAY = ["model.embedding_dim=32", "train.batch_size=32", "train.epochs=2", "eval.ks=[5,10]"]
_PINNED = {
    ("pop", "ibce"): (0.14333333333333334, 0.09938411176204681, 0.22, 0.12352607876062394),
    ("sasrec", "ibce"): (0.11666666666666667, 0.07136263549327851, 0.16, 0.08544257899125417),
    ("sasrec", "ce"): (0.13666666666666666, 0.08375789324442545, 0.17666666666666667, 0.09655455569426219),
    ("sasrec", "bce"): (0.12666666666666668, 0.08006719092528025, 0.17, 0.09395176519950231),
    ("dssm", "ibce"): (0.043333333333333335, 0.03009282688299815, 0.07333333333333333, 0.039822840690612794),
}


@pytest.mark.parametrize("arch,loss", sorted(_PINNED))
def test_the_default_protocol_gives_the_numbers_of_before(tmp_path, small_dataset, arch, loss):
    """eval.protocol full (the default) is the evaluation tcf always ran: the same runs, the same numbers."""
    from tcf.experiment import run_experiment

    config = tmp_path / "exp.yaml"
    config.write_text(f"dataset:\n  path: {small_dataset}\n")
    (cfg,) = load_config(config, [*_TODAY, f"model.architecture={arch}", f"train.loss={loss}"])
    assert cfg.eval.protocol == "full"
    result = run_experiment(cfg, tmp_path / "e.db")
    got = tuple(result.metrics[f"test_{m}"] for m in ("hr@5", "ndcg@5", "hr@10", "ndcg@10"))
    assert got == _PINNED[(arch, loss)]
    assert result.protocol == "full"
