"""A real encoder end to end: sentence-transformers' all-MiniLM-L6-v2 (from its PyPI wheel, see
`helpers.minilm_folder`) encoded block range by block range by `tcf infer` gives the item vectors that plain
transformers gives whole (mean pooling + L2 normalisation, the folder's own modules), picked up by `auto`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import hub_cache_model, minilm_folder, tcf_here

from tcf.config import load_config
from tcf.lm.hub import hub_origin, resolve_model
from tcf.lm.pooling import Pooling, pooling_rule
from tcf.preinfer.encode import model_dir_of
from tcf.preinfer.latents import LatentStore
from tcf.rec.text_towers import TextSource
from tcf.util.artifacts import read_meta

MAX_TOKENS = 32
TEXTS = [
    "Stocks rally as inflation cools faster than expected",
    "Local team wins the championship after a dramatic overtime",
    "New study links sleep quality to memory in older adults",
    "How to cook the perfect risotto in thirty minutes",
    "City council approves a new bike lane network downtown",
    "The best hiking trails for a weekend in the mountains",
    "Tech giant unveils a smaller, faster laptop chip",
    "Heavy rain expected across the coast this weekend",
    "Ten budget-friendly destinations for summer travel",
    "Scientists observe a rare supernova in a nearby galaxy",
    "Why electric cars are getting cheaper every year",
    "A beginner's guide to growing tomatoes on a balcony",
    "Central bank holds interest rates steady",
    "Veteran actor returns to the stage in a classic play",
    "Five exercises that strengthen your lower back",
    "Airline cancels hundreds of flights after a system outage",
    "The history of jazz in twelve essential albums",
    "Researchers train robots to fold laundry",
    "Housing prices fall for the third month in a row",
    "Marathon runner breaks a twenty-year-old record",
    "What to know before adopting a rescue dog",
    "Chess prodigy, 12, beats a grandmaster in a blitz game",
    "Volcano eruption forces thousands to evacuate",
    "A long, winding review of every film released this year, with notes on the directors, the casts, the "
    "soundtracks and the audiences who saw them in crowded theatres",  # longer than MAX_TOKENS: truncated
    "Coffee",
    "Ünïcödé, émojis 🎉 and CAPITALS are kept as written",
]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> Path:
    return minilm_folder(tmp_path_factory.mktemp("minilm"))


@pytest.fixture
def minilm_config(tmp_path, minilm) -> Path:
    """A dataset of TEXTS (every item seen by some user) and a config that encodes it with MiniLM."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "news.tsv").write_text("item\ttext\n" + "".join(f"N{i}\t{t}\n" for i, t in enumerate(TEXTS)))
    users = [" ".join(f"N{(u + k) % len(TEXTS)}" for k in range(6)) for u in range(len(TEXTS))]
    (data / "behaviors.tsv").write_text("user\titems\n" + "".join(f"U{u}\t{s}\n" for u, s in enumerate(users)))
    config = tmp_path / "exp.yaml"
    config.write_text(f"""dataset:
  path: {data}
model:
  item_tower: text
text_encoder:
  model: {minilm}
  max_tokens: {MAX_TOKENS}
  dtype: fp32
  latent_dtype: fp32
  gpu_memory_budget: 1GiB
""")
    return config


def _reference(model_dir: Path, texts: list[str]) -> torch.Tensor:
    """What sentence-transformers computes, in plain transformers: the whole model, masked mean, L2 norm."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    enc = tok(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None].float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(mean, dim=-1)


def test_block_wise_pre_inference_of_minilm_matches_transformers_whole(tmp_path, minilm_config):
    r = tcf_here("infer", str(minilm_config), "--ranges", "0:2,2:6", "--batch-size", "5",
                 "--db", str(tmp_path / "e.db"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    latents = Path(r.stdout.strip().splitlines()[-1])
    assert read_meta(latents)["ranges"] == [[0, 2], [2, 6]]
    cfg = load_config(minilm_config)[0]
    te = cfg.text_encoder
    source = TextSource(latents, model_dir_of(te), te.unfreeze, te.pooling, te.normalize)
    assert source.pooling_rule() == Pooling("mean", True)  # from the folder's own modules, not BERT's [CLS]

    keys = LatentStore(latents).item_keys()
    expected = _reference(source.model_dir, [TEXTS[int(k[1:])] for k in keys])
    vectors = source.item_vectors()
    assert vectors.shape == (len(TEXTS), 384)
    diff = (vectors - expected).abs().max().item()
    assert diff <= 1e-4, f"max abs diff {diff}"


def test_the_folders_defaults_are_picked_up_with_auto_and_explicit_values_win(minilm, tmp_path, monkeypatch):
    assert pooling_rule(minilm) == Pooling("mean", True)
    assert pooling_rule(minilm, "first", False) == Pooling("first", False)
    assert pooling_rule(minilm, "auto", False) == Pooling("mean", False)

    # the same folder as the Hub ships it, named by repo id and read offline from the cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_cache_model(tmp_path / "hub", "sentence-transformers/all-MiniLM-L6-v2", "c" * 40, minilm)
    model_dir = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert hub_origin(model_dir).revision == "c" * 40
    assert pooling_rule(model_dir) == Pooling("mean", True)
