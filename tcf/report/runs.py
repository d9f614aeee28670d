"""Runs as every table, pivot, plot and the Results screen read them, and the fields that pick them apart.

One loader (:meth:`Store.runs <tcf.store.db.Store.runs>`, a single query) gives :class:`RunRecord`\\ s.
A field is a column of the `results` view (``dataset``, ``item_tower``, ``lm_params``, ...) or a dotted
key of the run's stored config (``text_encoder.model``, ``seed``, ``train.lr``, ...); paths (keys ending
in ``.model`` or ``.path``) group and print as their base name::

    runs = load_runs(Store("experiments.db"), finished=True)
    field_value(runs[0], "text_encoder.model")   # 'opt-1.3b'
    selects(runs[0], parse_selector("item_tower=id", "baseline"))

Errors name the parameter (``ConfigError(None, "metric", ...)``), never a CLI flag: the CLI says which
flag set it.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, get_args

from tcf.errors import ConfigError, TcfError
from tcf.store.db import Store
from tcf.store.schema import is_metric_column, metric_key

MISSING = "-"  # how a run without the field (an ID run's text_encoder.model) prints
DEFAULT_METRIC = "test_ndcg@10"
_FIELD_HINT = ("a results column (dataset, item_tower, architecture, name, lm_params, ...) "
               "or a dotted config key (text_encoder.model, text_encoder.unfreeze, seed, train.lr, ...)")


# -- records -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunRecord:
    """One run: its `results` view row, its config (dotted keys), its job's tags and its final metrics."""

    run_id: int
    name: str
    status: str
    dataset: str | None
    architecture: str | None
    item_tower: str | None
    lm_params: int | None
    encoder: str | None  # base name of text_encoder.model; None for ID towers
    tags: tuple[str, ...]
    config: dict[str, Any]  # dotted key -> field_value (paths as base names, lists as JSON)
    metrics: dict[str, float]  # every final metric the run has: test_* and valid_* (fractions)
    raw_config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    row: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the `results` row as stored
    protocol: str = "full"  # the evaluation protocol of its test metrics (eval.protocol): full, cold


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A stored config as {dotted key: value}, values as stored; a null section (an ID run's
    ``text_encoder: null``) is a key of its own."""
    if not isinstance(config, dict):
        return {prefix[:-1]: config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def schema_keys(model: Any, sections: bool = True, prefix: str = "") -> Iterator[str]:
    """Dotted keys of a pydantic config model (``Config``): every leaf, and with ``sections`` each section."""
    for name, info in model.model_fields.items():
        section = next((a for a in (info.annotation, *get_args(info.annotation)) if hasattr(a, "model_fields")),
                       None)
        if section is None:
            yield prefix + name
            continue
        if sections:
            yield f"{prefix}{name}"  # the whole section, e.g. text_encoder (null for ID runs)
        yield from schema_keys(section, sections, f"{prefix}{name}.")


def _lookup(row: dict[str, Any], config: dict[str, Any], name: str) -> Any:
    if name in row:
        return row[name]
    if name.split(".")[0] == "text_encoder" and row.get("item_tower") == "id":
        return None  # an ID tower never uses the encoder that a config may name for all its runs
    node: Any = config
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def record(row: dict[str, Any]) -> RunRecord:
    """A RunRecord from a :meth:`Store.runs` row (the view's columns plus ``config`` and ``tags``)."""
    view = {k: v for k, v in row.items() if k not in ("config", "tags")}
    config = row.get("config") or {}

    def value(name: str) -> Any:
        return normalize(name, _lookup(view, config, name))

    return RunRecord(
        run_id=int(view["run_id"]), name=str(view.get("name") or ""), status=str(view.get("status") or ""),
        dataset=view.get("dataset"), architecture=view.get("architecture"), item_tower=view.get("item_tower"),
        lm_params=view.get("lm_params"), encoder=value("text_encoder.model"), tags=tuple(row.get("tags") or ()),
        config={key: value(key) for key in flatten(config)},
        metrics={k: float(v) for k, v in view.items() if is_metric_column(k) and v is not None},
        raw_config=config, row=view, protocol=str(view.get("protocol") or "full"),
    )


def load_runs(store: Store, finished: bool = False, dataset: str | None = None,
              name_glob: str | None = None) -> list[RunRecord]:
    """The store's runs (only finished ones with ``finished``), oldest first: one query, one snapshot."""
    return [record(row) for row in store.runs(dataset=dataset, name_glob=name_glob, finished=finished)]


# -- field values ------------------------------------------------------------------------------

def raw_value(run: RunRecord, name: str) -> Any:
    """A run's value of a field: the view column if there is one, else the dotted config key (None if absent).

    An ID item tower never uses the text encoder, so its text_encoder.* keys (present when a config
    sets the section for all its runs) count as absent: an ID row prints "-", not a model it never ran.
    """
    return _lookup(run.row, run.raw_config, name)


def normalize(name: str, value: Any) -> Any:
    """The grouping value: paths become base names, lists and sections compact JSON, the rest as is."""
    if value is None:
        return None
    if isinstance(value, str) and (name.endswith(".model") or name.endswith(".path")):
        return PurePath(value.rstrip("/")).name or value
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


def field_value(run: RunRecord, name: str) -> Any:
    """normalize(raw_value(...)): what a run contributes to a row, column or series key."""
    return normalize(name, raw_value(run, name))


def human_count(n: float) -> str:
    """Parameter counts as papers write them: 125M, 1.3B, 6.7B, 13B."""
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            scaled = n / size
            text = f"{scaled:.1f}" if round(scaled, 1) < 10 else f"{scaled:.0f}"
            return text.removesuffix(".0") + unit
    return f"{n:g}"


def display(name: str, value: Any) -> str:
    """How a (normalized) field value prints in a table cell, header or legend."""
    if value is None:
        return MISSING
    if name == "lm_params" and isinstance(value, (int, float)):
        return human_count(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_SIZED_NUMBER = re.compile(r"(\d+(?:\.\d+)?)([kmbt](?![a-z]))?", re.IGNORECASE)
_UNIT = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def _natural(text: str) -> tuple:
    """Sort key that orders opt-125m < opt-350m < opt-1.3b < opt-13b (numbers with size suffixes)."""
    parts: list[tuple[int, Any]] = []
    pos = 0
    for m in _SIZED_NUMBER.finditer(text):
        parts.append((0, text[pos:m.start()].lower()))
        parts.append((1, float(m.group(1)) * _UNIT.get((m.group(2) or "").lower(), 1.0)))
        pos = m.end()
    parts.append((0, text[pos:].lower()))
    return (*parts, (0, text))


def sort_key(value: Any) -> tuple:
    """Numbers numerically, strings naturally, missing values last."""
    if value is None:
        return (2,)
    if isinstance(value, (int, float)):
        return (0, float(value))
    return (1, _natural(str(value)))


# -- what runs measure: only seeds fold ------------------------------------------------------------

FOLDED = "seed"  # the one key by which runs of one model may differ and still be averaged
#: Config keys that say how a run was computed or named, not what it measures.
NOT_A_VARIANT = frozenset({FOLDED, "name", "train.device", "train.threads", "eval.batch_size",
                           "text_encoder.gpu_memory_budget", "text_encoder.ranges", "text_encoder.batch_size"})
#: Config keys that a `results` column shows: an added row or series field uses the column's name.
COLUMN_OF_KEY = {"model.architecture": "architecture", "model.item_tower": "item_tower", "dataset.path": "dataset",
                 "eval.protocol": "protocol"}
_FIRST_KEYS = ("model.architecture", "model.item_tower", "dataset.path", "eval.protocol", "text_encoder.model",
               "text_encoder.unfreeze", "text_encoder.pooling")


def variant(run: RunRecord) -> dict[str, str]:
    """What a run measures: its config as dotted keys (paths as base names, values as JSON), without the seed
    and :data:`NOT_A_VARIANT`; unset and absent are the same (an ID tower's text_encoder keys are unset)."""
    return {k: json.dumps(v, sort_keys=True) for k, v in run.config.items()
            if v is not None and k not in NOT_A_VARIANT and not isinstance(v, dict)}


def differing_keys(runs: Sequence[RunRecord]) -> list[str]:
    """Keys whose values are not the same in every run (a key some runs lack counts), in the order in which
    they best tell runs apart: architecture, item tower, dataset, protocol, encoder, depth, pooling, then by name.
    Empty: the runs differ in their seed alone (and in how they were computed), so they may be averaged."""
    variants = [variant(r) for r in runs]
    keys = {k for v in variants for k in v}
    differ = [k for k in keys if len({v.get(k) for v in variants}) > 1]
    return sorted(differ, key=lambda k: (_FIRST_KEYS.index(k) if k in _FIRST_KEYS else len(_FIRST_KEYS), k))


def key_field(key: str, taken: Iterable[str]) -> str:
    """The field that shows a config key: the `results` column that holds it (``architecture``), else the key."""
    field = COLUMN_OF_KEY.get(key, key)
    return key if field in set(taken) else field


def split_fields(groups: Iterable[Sequence[RunRecord]], fields: Sequence[str], param: str) -> list[str]:
    """Fields to add to ``fields`` so that no group's runs differ in anything but their seed, found one at a
    time (the key :func:`differing_keys` puts first, over every group), re-grouping by the fields so far.

    ``groups``: the runs that ``fields`` put together. A ConfigError about ``param`` names the keys that vary
    when adding fields cannot separate the runs (two dataset folders with one name, say)."""
    added: list[str] = []
    pending = [list(g) for g in groups]
    while True:
        within = {k for g in pending for k in differing_keys(g)}
        varying = [k for k in differing_keys([r for g in pending for r in g]) if k in within]
        if not varying:
            return added
        field = key_field(varying[0], [*fields, *added])
        if field in (*fields, *added):
            raise ConfigError(None, param, f"runs that {', '.join(fields)} put together differ in "
                              f"{', '.join(varying)}, which this table cannot tell apart; pick runs that "
                              "differ in seed alone")
        added.append(field)
        regrouped: list[list[RunRecord]] = []
        for g in pending:
            by_value: dict[Any, list[RunRecord]] = {}
            for run in g:
                by_value.setdefault(field_value(run, field), []).append(run)
            regrouped.extend(by_value.values())
        pending = regrouped


# -- checking fields and metrics ---------------------------------------------------------------

def known_fields(columns: Iterable[str], runs: Iterable[RunRecord]) -> set[str]:
    """Every usable field: view columns, the config schema's dotted keys, and keys stored configs have."""
    from tcf.config import Config

    fields = set(columns) | set(schema_keys(Config))
    for run in runs:
        fields.update(flatten(run.raw_config))
    return fields


def check_fields(fields: Sequence[str], known: set[str], param: str) -> None:
    """Raise a ConfigError about ``param`` for the first field that is neither a column nor a config key."""
    for name in fields:
        if name not in known:
            raise ConfigError(None, param, f"unknown field {name!r}; use {_FIELD_HINT}")


def check_metric(metric: str, runs: Sequence[RunRecord], param: str = "metric") -> None:
    """Raise a ConfigError about ``param`` unless some run has the metric; the message lists those that do."""
    available = sorted({m for run in runs for m in run.metrics}, key=metric_key)
    if metric not in available:
        raise ConfigError(None, param, f"unknown metric {metric!r}; available: {', '.join(available) or 'none'}")


def no_runs(store: Store, dataset: str | None = None, name_glob: str | None = None) -> TcfError:
    """The error for filters that leave no finished run; it names the store and the filters' values."""
    where = (f" on dataset {dataset!r}" if dataset else "") + (f" named like {name_glob!r}" if name_glob else "")
    return TcfError(f"{store.path}: no finished runs{where}")


# -- selectors ---------------------------------------------------------------------------------

def parse_fields(text: str, param: str) -> list[str]:
    """``a,b.c`` -> ["a", "b.c"]; empty items and repeats are errors about ``param``."""
    fields = [f.strip() for f in text.split(",")]
    if any(not f for f in fields):
        raise ConfigError(None, param, f"empty field in {text!r}; give comma-separated fields, e.g. item_tower,dataset")
    if len(set(fields)) != len(fields):
        raise ConfigError(None, param, f"a field repeats in {text!r}")
    return fields


def parse_selector(text: str, param: str = "baseline") -> dict[str, str]:
    """``key=value[,key=value]`` -> {key: value}."""
    pairs: dict[str, str] = {}
    for part in text.split(","):
        key, eq, wanted = part.partition("=")
        if not eq or not key.strip():
            raise ConfigError(None, param, f"must be key=value[,key=value], e.g. item_tower=id; got {text!r}")
        pairs[key.strip()] = wanted.strip()
    return pairs


def _matches(name: str, raw: Any, wanted: str) -> bool:
    if raw is None:
        return wanted.lower() in ("", "none", "null", MISSING)
    value = normalize(name, raw)
    if isinstance(value, bool):
        return wanted.lower() == str(value).lower()
    if wanted in (str(raw), str(value), display(name, value)):
        return True
    if isinstance(value, (int, float)):
        try:
            return math.isclose(float(wanted), float(value), rel_tol=1e-9, abs_tol=0.0)
        except ValueError:
            return False
    return False


def selects(run: RunRecord, selector: dict[str, str]) -> bool:
    """Whether a run matches every key=value of a selector (paths match by full path or base name)."""
    return all(_matches(name, raw_value(run, name), wanted) for name, wanted in selector.items())


# -- the Results screen's `/` query ------------------------------------------------------------

QUERY_FIELDS = ("dataset", "tag", "arch", "tower", "encoder", "status")  # `field:pattern`; other words are free


@dataclass(frozen=True)
class Query:
    """Free words (each must occur somewhere) and field patterns (any pattern of a field may match)."""

    words: tuple[str, ...] = ()
    fields: tuple[tuple[str, tuple[str, ...]], ...] = ()


def parse_query(text: str) -> Query:
    """``opt dataset:mind tag:scaling`` -> words ("opt",) and fields; an unknown ``x:y`` is a free word."""
    words: list[str] = []
    fields: dict[str, list[str]] = {}
    for token in text.lower().split():
        name, colon, pattern = token.partition(":")
        if colon and name in QUERY_FIELDS and pattern:
            fields.setdefault(name, []).append(pattern)
        else:
            words.append(token)
    return Query(tuple(words), tuple((k, tuple(v)) for k, v in fields.items()))


def _like(value: str, pattern: str) -> bool:
    """Glob when the pattern has wildcards, else case-insensitive equality (dataset:mind is not mind_small)."""
    value = value.lower()
    return fnmatch.fnmatchcase(value, pattern) if any(c in pattern for c in "*?[") else value == pattern


def matches(run: RunRecord, query: Query) -> bool:
    """Whether a run passes the query: every free word (in name, dataset, encoder or tags) and every field."""
    haystack = " ".join([run.name, run.dataset or "", run.encoder or "", *run.tags]).lower()
    if any(word not in haystack for word in query.words):
        return False
    values: dict[str, list[str]] = {
        "dataset": [run.dataset or ""], "tag": list(run.tags), "arch": [run.architecture or ""],
        "tower": [run.item_tower or ""], "encoder": [run.encoder or ""], "status": [run.status],
    }
    return all(any(_like(v, p) for v in values[name] for p in patterns) for name, patterns in query.fields)
