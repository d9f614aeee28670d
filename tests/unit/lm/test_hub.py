"""`text_encoder.model` as a Hugging Face repo id: the naming rule, and resolution offline from a hub cache laid
out by hand (no test reaches the Hub): revisions, sub-folder transformers, and one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import hub_cache_model, make_tiny_opt

from tcf.config import TextEncoderConfig, hub_model, load_config
from tcf.data.synth import synth_dataset
from tcf.errors import TcfError
from tcf.lm.hub import HubOrigin, hub_cache_dir, hub_origin, resolve_model
from tcf.lm.tokenize import token_key
from tcf.preinfer.encode import model_dir_of

REV_A, REV_B = "a" * 40, "b" * 40


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny OPT saved by save_pretrained (safetensors) with its tokenizer, and the raw dataset it was made for."""
    from tcf.data.reader import load_dataset

    root = tmp_path_factory.mktemp("tiny")
    synth_dataset(root / "data", users=40, items=30, seed=0)
    raw = load_dataset(root / "data")
    return make_tiny_opt(root / "opt", raw.item_texts, hidden=16, n_blocks=2), raw


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty hub cache, offline, found through HF_HOME (as users point at one)."""
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "hf" / "hub").mkdir(parents=True)
    return tmp_path / "hf" / "hub"


@pytest.mark.parametrize("text,expected", [
    ("facebook/opt-1.3b", ("facebook/opt-1.3b", None)),
    ("facebook/opt-1.3b@main", ("facebook/opt-1.3b", "main")),
    (f"org/name@{REV_A}", ("org/name", REV_A)),
    ("org/name@refs/pr/1", ("org/name", "refs/pr/1")),
    ("./org/name", None), ("/org/name", None), ("~/org/name", None),  # written as paths: local
    ("opt-1.3b", None), ("a/b/c", None), ("org/", None),  # not org/name: local (missing ones fail when read)
])
def test_a_string_is_a_local_path_or_a_repo_id_by_one_rule(text, expected):
    assert hub_model(text) == expected


def test_an_existing_folder_is_local_even_when_it_looks_like_a_repo_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert hub_model("org/name") is None
    assert hub_model("org/other") == ("org/other", None)


def test_a_stored_config_keeps_a_repo_id_and_makes_a_path_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "opt").mkdir(parents=True)
    base = {"dataset": {"path": "data"}}
    repo = load_config(None, ["text_encoder.model=facebook/opt-125m@main"], base=base)[0].resolved()
    local = load_config(None, ["text_encoder.model=models/opt"], base=base)[0].resolved()
    assert repo.text_encoder.model == "facebook/opt-125m@main"
    assert local.text_encoder.model == str(tmp_path / "models" / "opt")


def test_the_cache_is_found_as_huggingface_hub_finds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache_dir() == tmp_path / "elsewhere"


def test_a_repo_resolves_offline_from_the_cache_at_main_or_at_the_revision_asked(tiny, cache):
    model, raw = tiny
    old = hub_cache_model(cache, "org/tiny", REV_A, model, refs=("v1",))
    new = hub_cache_model(cache, "org/tiny", REV_B, model, refs=("main",))
    assert resolve_model("org/tiny") == new.resolve()
    assert resolve_model(f"org/tiny@{REV_A}") == old.resolve()
    assert resolve_model("org/tiny@v1") == old.resolve()  # a tag or branch, through refs/
    assert model_dir_of(TextEncoderConfig(model="org/tiny")) == new.resolve()  # what every command calls
    assert hub_origin(resolve_model("org/tiny")) == HubOrigin("org/tiny", REV_B)
    assert hub_origin(model) is None  # a folder outside the cache has no revision

    # the token artifact's identity names the commit: a new revision never reuses an old one's tokens
    key_old, key_new, key_local = (token_key(raw, folder, 8) for folder in (old, new, model))
    assert key_old["tokenizer"] == key_new["tokenizer"] == key_local["tokenizer"]
    assert (key_old["revision"], key_new["revision"], key_new["repo"]) == (REV_A, REV_B, "org/tiny")
    assert "revision" not in key_local  # a local folder's key is what it always was


def test_a_transformer_in_a_sub_folder_is_found_through_modules_json(tiny, cache, tmp_path):
    model, _ = tiny
    st = tmp_path / "st"
    shutil.copytree(model, st / "0_Transformer")
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    snapshot = hub_cache_model(cache, "org/st", REV_A, st)
    assert resolve_model("org/st") == (snapshot / "0_Transformer").resolve()
    assert hub_origin(resolve_model("org/st")) == HubOrigin("org/st", REV_A)
    assert resolve_model(str(st)) == st / "0_Transformer"  # the same rule for a local folder


def test_a_missing_repo_is_one_error_naming_it_the_cache_and_that_it_was_offline(cache):
    with pytest.raises(TcfError) as info:
        resolve_model("org/missing@v2")
    message = str(info.value)
    assert message.startswith("org/missing@v2: ") and str(cache) in message and "offline" in message
    assert "\n" not in message
    with pytest.raises(TcfError, match="'org/bad--name' is neither a local folder nor a valid Hugging Face repo id"):
        resolve_model("org/bad--name")


def test_a_repo_without_safetensors_is_one_clear_error(tiny, cache, tmp_path):
    model, _ = tiny
    pickled = tmp_path / "pickled"
    shutil.copytree(model, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded, ever")
    hub_cache_model(cache, "org/pickled", REV_A, pickled)
    with pytest.raises(TcfError, match=r"^org/pickled: the cached snapshot .* has no \.safetensors weights.*"
                                       r"never loads pickled") as info:
        resolve_model("org/pickled")
    assert "\n" not in str(info.value)


def test_a_local_folder_resolves_as_before(tiny, tmp_path, monkeypatch):
    model, _ = tiny
    monkeypatch.chdir(model.parent)
    assert resolve_model(model.name) == model.resolve()
    assert resolve_model(f"./{model.name}") == model.resolve()
    with pytest.raises(TcfError, match="not a model directory \\(not found\\)"):
        model_dir_of(TextEncoderConfig(model=str(tmp_path / "nowhere")))


def _online(monkeypatch, answer):
    """Online (HF_HUB_OFFLINE unset), with ``snapshot_download`` replaced by ``answer(repo, **kwargs)``: the
    calls it got."""
    import huggingface_hub

    calls: list[dict] = []

    def fake(repo_id, **kwargs):
        calls.append({"repo": repo_id, **kwargs})
        return answer(repo_id, **kwargs)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return calls


def test_online_only_what_tcf_reads_is_fetched_and_never_pickles(tiny, cache, tmp_path, monkeypatch):
    from fnmatch import fnmatchcase

    model, _ = tiny
    st = tmp_path / "st"
    shutil.copytree(model, st / "0_Transformer")
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    snapshot = hub_cache_model(cache, "org/st-online", REV_B, st)
    calls = _online(monkeypatch, lambda repo, **kw: str(snapshot))
    assert resolve_model("org/st-online@main") == (snapshot / "0_Transformer").resolve()
    first, modules = calls
    assert (first["revision"], first["local_files_only"], first["cache_dir"]) == ("main", False, str(cache))
    assert modules["revision"] == REV_B  # the module files of the very commit the first call resolved

    def fetched(path: str, call: dict) -> bool:
        return any(fnmatchcase(path, p) for p in call["allow_patterns"])

    wanted = ["config.json", "model.safetensors", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
              "tokenizer.json", "tokenizer_config.json", "vocab.txt", "modules.json", "sentence_bert_config.json"]
    assert all(fetched(p, first) for p in wanted)
    assert all(fetched(p, modules) for p in ("0_Transformer/config.json", "0_Transformer/vocab.txt",
                                             "1_Pooling/config.json"))
    never = ["pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "rust_model.ot", "onnx/model.onnx",
             "training_args.bin", "0_Transformer/pytorch_model.bin", "openvino/openvino_model.bin"]
    assert not [p for p in never if fetched(p, first) or fetched(p, modules)]
    resolve_model("org/st-online@main")
    assert len(calls) == 2  # asked once per process


def test_online_errors_are_one_line_each(tiny, cache, tmp_path, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny[0], pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    snapshot = hub_cache_model(cache, "org/pickled", REV_A, pickled)
    _online(monkeypatch, lambda repo, **kwargs: str(snapshot))
    with pytest.raises(TcfError, match=f"^org/pickled \\(commit {REV_A}\\) has no .safetensors weights; tcf never"):
        resolve_model("org/pickled")

    def unreachable(repo, **kwargs):
        raise LocalEntryNotFoundError("Cannot find ...\nmany lines")

    _online(monkeypatch, unreachable)
    with pytest.raises(TcfError, match=f"^org/away: .*{cache}.*could not be reached, so tcf looked offline"):
        resolve_model("org/away")

    def missing(repo, **kwargs):
        raise RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # (its __init__ wants an HTTP response)

    _online(monkeypatch, missing)
    with pytest.raises(TcfError, match="^org/nothing: not a local folder, and no such repo on the Hugging Face Hub"):
        resolve_model("org/nothing")
