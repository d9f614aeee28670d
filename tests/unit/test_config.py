import hashlib
import json
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from tcf.config import load_config
from tcf.demo import DEMO_CONFIG
from tcf.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "dataset:\n  path: data/x\ntrain:\n  epochs: 3\n")
    (cfg,) = load_config(p, ["train.lr=0.01", "model.architecture=dssm", "eval.ks=[5, 20]"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.01
    assert cfg.model.architecture == "dssm"
    assert cfg.eval.ks == [5, 10, 20]  # HR@10 drives selection, so it is always there
    assert cfg.run_name == "x-dssm-id"


def test_unknown_key_names_file_line_and_key(tmp_path):
    p = write(tmp_path, "dataset:\n  path: d\ntrain:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == f"{p}:4: train.epochz: unknown key"


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, "dataset:\n  path: d\ntrain:\n  batch_size: many\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}:4: train.batch_size: ")


def test_bad_override_names_source(tmp_path):
    p = write(tmp_path, "dataset:\n  path: d\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, ["model.num_heads=3"])  # does not divide 64
    assert "num_heads (3) must divide embedding_dim (64)" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(p, ["train.nope=1"])
    assert str(e.value) == f"{p}: train.nope: unknown key"
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(p, ["train.epochs"])


def test_missing_dataset_and_escaping_item_file(tmp_path):
    with pytest.raises(ConfigError, match="dataset: required key is missing"):
        load_config(write(tmp_path, "seed: 1\n"))
    with pytest.raises(ConfigError, match="item_file"):
        load_config(write(tmp_path, "dataset:\n  path: d\n  item_file: ../x.tsv\n"))


def test_sweep_expands_cartesian_product(tmp_path):
    p = write(tmp_path, "name: s\ndataset:\n  path: d\nsweep:\n  model.architecture: [sasrec, dssm]\n"
                        "  seed: [1, 2, 3]\n")
    cfgs = load_config(p)
    assert [(c.model.architecture, c.seed) for c in cfgs] == [
        (a, s) for a in ("sasrec", "dssm") for s in (1, 2, 3)]
    assert cfgs[0].name == "s[architecture=sasrec,seed=1]"
    assert len({c.hash() for c in cfgs}) == 6


def test_hash_ignores_name_but_not_settings(tmp_path):
    p = write(tmp_path, "dataset:\n  path: d\n")
    (a,) = load_config(p, ["name=one"])
    (b,) = load_config(p, ["name=two"])
    (c,) = load_config(p, ["train.lr=0.5"])
    assert a.hash() == b.hash() != c.hash()


def test_text_template_is_hashed_when_set_and_checked_at_load(tmp_path):
    p = write(tmp_path, 'dataset:\n  path: d\n  text_template: "{title}. {brand}"\n')
    (a,) = load_config(p)
    (b,) = load_config(p, ['dataset.text_template="{brand}. {title}"'])
    (unset,) = load_config(write(tmp_path, "dataset:\n  path: d\n"))
    assert a.dataset.text_template == "{title}. {brand}"
    assert len({a.hash(), b.hash(), unset.hash()}) == 3
    # unset, it is not in the hash: configs keep the hashes they had before the key existed
    data = unset.model_dump(mode="json", exclude={"name"})
    assert data["dataset"].pop("text_template") is None
    data["eval"] = unset.eval.hashed()  # the evaluation protocol's own rule (next test)
    assert data["train"].pop("threads") is None  # so is train.threads (chosen per machine when unset)
    assert unset.hash() == hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize(("value", "message"), [
    ('"{title"', "unbalanced '{' at position 0"),
    ('"{0}"', "positional placeholder {0} at position 0"),
    ('"{a.b}"', "attribute or index access in {a.b}"),
    ('"{a!r}"', "conversion in {a!r}"),
    ('"{a:>10}"', "format spec in {a:>10}"),
    ("{title}", 'must be a string: quote it, e.g. "{title}. {brand}"'),  # YAML reads it as a mapping
])
def test_malformed_text_template_is_one_config_error(tmp_path, value, message):
    p = write(tmp_path, f"dataset:\n  path: d\n  text_template: {value}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}:3: dataset.text_template: {message}")


def test_protocol_settings_are_part_of_the_run_identity(tmp_path):
    from tcf.config import Config

    plain = Config.model_validate({"dataset": {"path": "/data/mind"}})
    data = plain.model_dump(mode="json", exclude={"name"})
    del data["dataset"]["text_template"]
    data["eval"] = {"ks": data["eval"]["ks"], "batch_size": data["eval"]["batch_size"]}  # eval before protocols
    del data["train"]["threads"]
    assert plain.hash() == hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    p = write(tmp_path, "dataset:\n  path: /data/mind\nsweep:\n  eval.protocol: [full, cold]\n")
    full, cold = load_config(p)
    assert full.hash() == plain.hash() != cold.hash()  # two protocols of one config are two runs
    (other_share,) = load_config(p, ["eval.protocol=cold", "eval.cold_items=0.3"])
    (other_seed,) = load_config(p, ["eval.protocol=cold", "eval.cold_seed=7"])
    assert len({cold.hash(), other_share.hash(), other_seed.hash()}) == 3
    (unused,) = load_config(p, ["eval.protocol=full", "eval.cold_items=0.3"])
    assert unused.hash() == full.hash()  # a cold-only key changes nothing under full
    (buckets,) = load_config(p, ["eval.protocol=full", "eval.popularity_buckets=4"])
    assert buckets.hash() != full.hash()


def test_protocol_keys_are_checked(tmp_path):
    p = write(tmp_path, "dataset:\n  path: d\neval:\n  protocol: cold\n  popularity_buckets: 3\n")
    with pytest.raises(ConfigError, match="eval: popularity_buckets needs protocol full"):
        load_config(p)
    for bad in ("eval.cold_items=0", "eval.cold_items=1", "eval.protocol=warm", "eval.popularity_buckets=21"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(write(tmp_path, "dataset:\n  path: d\n"), [bad])


def test_demo_yaml_equals_embedded_demo():
    assert yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text()) == DEMO_CONFIG


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name):
    assert load_config(ROOT / "configs" / name)


def test_runs_variants_times_sweep(tmp_path):
    p = write(tmp_path, "name: v\ndataset:\n  path: d\nruns:\n  - {model.architecture: pop}\n"
                        "  - {model.architecture: dssm, train.batch_size: 512, name: big-dssm}\n"
                        "sweep:\n  seed: [1, 2]\n")
    cfgs = load_config(p)
    assert [(c.model.architecture, c.train.batch_size, c.seed) for c in cfgs] == [
        ("pop", 64, 1), ("pop", 64, 2), ("dssm", 512, 1), ("dssm", 512, 2)]
    assert cfgs[0].name == "v[architecture=pop,seed=1]" and cfgs[3].name == "big-dssm"
    with pytest.raises(ConfigError, match="runs: must be a list"):
        load_config(write(tmp_path, "dataset:\n  path: d\nruns: {a: 1}\n"))


def test_override_wins_over_runs_and_sweep(tmp_path):
    p = write(tmp_path, "dataset:\n  path: d\nruns:\n  - {model.architecture: pop}\n"
                        "  - {model.architecture: dssm, train.batch_size: 512}\nsweep:\n  seed: [1, 2]\n")
    cfgs = load_config(p, ["model.architecture=sasrec"])
    assert [(c.model.architecture, c.train.batch_size, c.seed) for c in cfgs] == [
        ("sasrec", 64, 1), ("sasrec", 64, 2), ("sasrec", 512, 1), ("sasrec", 512, 2)]
    assert len(load_config(p, ["model.architecture=pop", "train.batch_size=8", "seed=0"])) == 1


def test_normalize_is_auto_or_a_yaml_bool(tmp_path):
    p = write(tmp_path, "dataset:\n  path: d\ntext_encoder:\n  model: m\n")
    assert [load_config(p, [f"text_encoder.normalize={v}"])[0].text_encoder.normalize
            for v in ("auto", "true", "false", "on")] == ["auto", True, False, True]


def test_bare_off_means_off(tmp_path):
    (cfg,) = load_config(write(tmp_path, "dataset:\n  path: d\ntrain:\n  amp: off\n"))
    assert cfg.train.amp == "off"
    (cfg,) = load_config(write(tmp_path, "dataset:\n  path: d\n"), ["train.amp=off"])
    assert cfg.train.amp == "off"


@pytest.mark.parametrize("override,key,says", [
    ("model.embedding_dim=1000000000", "model.embedding_dim", "less than or equal to 16384"),
    ("train.batch_size=1000000000000", "train.batch_size", "less than or equal to 1048576"),
    ("text_encoder.max_tokens=10000000", "text_encoder.max_tokens", "less than or equal to 32768"),
    ("text_encoder.gpu_memory_budget=999999TiB", "text_encoder.gpu_memory_budget", "more memory than any machine"),
    ("eval.ks=[10,1000000000]", "eval.ks", "every K must be in 1..100000"),
    ("seed=-1", "seed", "greater than or equal to 0"),
    ("train.device=tpu", "train.device", "unknown device 'tpu'"),
    ("train.device=cuda:x", "train.device", "unknown device 'cuda:x'"),
    ("text_encoder.normalize=maybe", "text_encoder.normalize", "must be auto, true or false, got 'maybe'"),
])
def test_values_that_validate_as_types_but_cannot_work_are_refused_at_load(tmp_path, override, key, says):
    """Issue 17, item 8: absurd sizes and unknown devices are refused when the config is read, naming the key."""
    p = tmp_path / "c.yaml"
    p.write_text("dataset:\n  path: d\ntext_encoder:\n  model: m\n")
    with pytest.raises(ConfigError) as info:
        load_config(p, [override])
    assert info.value.key == key and says in info.value.message


def test_a_sweep_of_a_million_runs_is_refused_before_it_is_expanded(tmp_path):
    p = tmp_path / "c.yaml"
    values = list(range(1000))
    p.write_text(f"dataset:\n  path: d\nsweep:\n  seed: {values}\n  train.lr: {[0.001] * 1000}\n")
    with pytest.raises(ConfigError, match="expands to 1,000,000 runs; one config holds at most 10,000") as info:
        load_config(p)
    assert info.value.key == "sweep"


def test_pinned_threads_are_part_of_the_hash_and_unset_keeps_it(tmp_path):
    p = write(tmp_path, "dataset:\n  path: d\n")
    (auto,) = load_config(p)
    (one,) = load_config(p, ["train.threads=1"])
    (two,) = load_config(p, ["train.threads=2"])
    assert auto.train.threads is None and len({auto.hash(), one.hash(), two.hash()}) == 3
    with pytest.raises(ConfigError, match="train.threads"):
        load_config(p, ["train.threads=0"])
