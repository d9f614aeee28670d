"""`text_encoder.pooling` and `.normalize`: a sentence-transformers folder's Pooling and Normalize modules are the
defaults of `auto`, the family's pooling without normalisation otherwise; explicit values win."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tcf.errors import TcfError
from tcf.lm.pooling import Pooling, pool, pooling_rule
from tcf.lm.st_modules import modules_of, read_modules, transformer_dir

ST = "sentence_transformers.models."


def _folder(path: Path, model_type: str = "bert", modules: list[tuple[str, str]] | None = None,
            pooling: dict | None = None) -> Path:
    """A model folder (config.json only: the rules read nothing else) with modules.json [(type, path)]."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    if modules is not None:
        (path / "modules.json").write_text(json.dumps(
            [{"idx": i, "name": str(i), "path": p, "type": ST + t} for i, (t, p) in enumerate(modules)]))
    if pooling is not None:
        (path / "1_Pooling").mkdir()
        (path / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 8, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
             "pooling_mode_max_tokens": False, **pooling}))
    return path


FULL = [("Transformer", ""), ("Pooling", "1_Pooling"), ("Normalize", "2_Normalize")]


def test_without_modules_json_auto_is_the_familys_pooling_unnormalised(tmp_path):
    assert pooling_rule(_folder(tmp_path / "bert")) == Pooling("first", False)
    assert pooling_rule(_folder(tmp_path / "opt", "opt")) == Pooling("mean", False)
    assert pooling_rule(_folder(tmp_path / "opt", "opt"), "last", True) == Pooling("last", True)


@pytest.mark.parametrize("mode,kind", [("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "first"),
                                       ("pooling_mode_lasttoken", "last")])
def test_a_sentence_transformers_folder_sets_the_defaults(tmp_path, mode, kind):
    folder = _folder(tmp_path, modules=FULL, pooling={mode: True})
    assert pooling_rule(folder) == Pooling(kind, True)
    assert pooling_rule(folder, "auto", False) == Pooling(kind, False)  # an explicit value wins
    assert pooling_rule(folder, "last", "auto") == Pooling("last", True)


def test_normalize_only_when_a_normalize_module_follows_the_pooling(tmp_path):
    plain = _folder(tmp_path / "plain", modules=FULL[:2], pooling={"pooling_mode_mean_tokens": True})
    assert pooling_rule(plain) == Pooling("mean", False)
    before = _folder(tmp_path / "before", modules=[FULL[2], *FULL[:2]], pooling={"pooling_mode_mean_tokens": True})
    assert pooling_rule(before) == Pooling("mean", False)


def test_a_pooling_tcf_does_not_compute_is_an_error_under_auto_only(tmp_path):
    folder = _folder(tmp_path, modules=FULL, pooling={"pooling_mode_max_tokens": True})
    with pytest.raises(TcfError, match="1_Pooling/config.json: asks for pooling_mode_max_tokens; .*text_encoder"):
        pooling_rule(folder)
    assert pooling_rule(folder, "mean") == Pooling("mean", True)


def test_the_transformer_may_sit_in_a_sub_folder(tmp_path):
    root = tmp_path / "st"
    _folder(root / "0_Transformer")
    _folder(root, modules=[("Transformer", "0_Transformer"), ("Pooling", "1_Pooling"), ("Normalize", "2")],
            pooling={"pooling_mode_mean_tokens": True})
    (root / "config.json").unlink()
    model_dir = transformer_dir(root)
    assert model_dir == root / "0_Transformer"
    assert modules_of(model_dir).root == root
    assert pooling_rule(model_dir) == Pooling("mean", True)
    assert modules_of(_folder(tmp_path / "other" / "0_Transformer")) is None  # a parent without modules.json


@pytest.mark.parametrize("path", ["../outside", "/etc"])
def test_a_module_path_never_leads_outside_the_folder(tmp_path, path):
    folder = _folder(tmp_path / "m", modules=[("Transformer", path)])
    with pytest.raises(TcfError, match="leads outside"):
        read_modules(folder)


def test_a_malformed_modules_json_is_one_error_naming_it(tmp_path):
    folder = _folder(tmp_path)
    (folder / "modules.json").write_text("{")
    with pytest.raises(TcfError, match="modules.json: not valid JSON"):
        pooling_rule(folder)
    (folder / "modules.json").write_text(json.dumps([{"type": ST + "Pooling", "path": "p"}]))
    with pytest.raises(TcfError, match="no sentence_transformers.models.Transformer module"):
        pooling_rule(folder)


def test_finish_l2_normalises_only_when_asked():
    hidden, mask = torch.randn(3, 4, 5), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    mean = pool(hidden * mask[..., None], mask)["mean"]
    assert torch.equal(Pooling("mean", False).finish(mean), mean)
    normed = Pooling("mean", True).finish(mean)
    assert torch.allclose(normed.norm(dim=-1), torch.ones(3)) and torch.allclose(normed * mean.norm(dim=-1)[:, None],
                                                                                   mean, atol=1e-6)
