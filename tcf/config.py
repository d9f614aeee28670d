"""Experiment configs: YAML validated by pydantic, ``-S key=value`` overrides, sweeps, hashing.

A config file describes one experiment; a ``sweep`` section (dotted key -> list of values) expands it
into the cartesian product of runs, and a ``runs`` list adds variants that change several keys at
once. Every error names the file (or ``-S``), the dotted key and, for YAML files, the line.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from tcf.errors import ConfigError
from tcf.util.template import parse_template
from tcf.util.units import parse_bytes


def parse_block_ranges(value: object) -> tuple[tuple[int, int], ...]:
    """'0:6,6:16' (or [[0, 6], [6, 16]]) -> ((0, 6), (6, 16)): half-open, non-empty, contiguous from block 0.
    Whether they end at the model's last block is checked against the checkpoint when planning."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        spans = []
        for part in parts:
            m = re.fullmatch(r"(\d+)\s*:\s*(\d+)", part)
            if not m:
                raise ValueError(f"bad block range {part!r} in {value!r}: write start:stop, e.g. 0:6,6:16")
            spans.append((int(m.group(1)), int(m.group(2))))
    elif isinstance(value, (list, tuple)) and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, int) for x in p) for p in value):
        spans = [(int(a), int(b)) for a, b in value]
    else:
        raise ValueError(f"must be block ranges like 0:6,6:16, got {value!r}")
    expected = 0
    for start, stop in spans:
        if stop <= start:
            raise ValueError(f"bad block range '{start}:{stop}': stop must be greater than start")
        if start != expected:
            what = "must start at block 0" if expected == 0 else f"must start at {expected}, where the previous ended"
            raise ValueError(f"bad block range '{start}:{stop}': {what}")
        expected = stop
    if not spans:
        raise ValueError("no block ranges given")
    return tuple(spans)


def format_block_ranges(spans: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{s}:{e}" for s, e in spans)


#: ``org/name`` with an optional ``@revision`` (branch, tag or commit): how a Hugging Face repo id is written.
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?")


def hub_model(model: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when ``text_encoder.model`` names a Hugging Face repo; None for a local folder.

    The rule (one place, so config, commands and workers agree): a string is a local path if it exists as a
    folder or starts with ``.``, ``/`` or ``~``; otherwise one written ``org/name[@revision]`` is a repo id;
    anything else is a local path (one that is missing fails where the model is read)."""
    if model.startswith((".", "/", "~")) or Path(model).is_dir():
        return None
    m = HUB_ID.fullmatch(model)
    return (m["repo"], m["revision"]) if m else None


def _plausible_bytes(n: int) -> int:
    if n > MAX_BYTES:
        raise ValueError(f"{n:,} bytes is more memory than any machine has (at most 64 TiB)")
    return n


MAX_BYTES = 64 << 40
MAX_RUNS = 10_000  # runs one config may expand to: more is a typo in a sweep, not an experiment
#: A byte count written as people write one ('8GiB', '6.5GB', 1024), an int of bytes once loaded.
ByteSize = Annotated[int, BeforeValidator(parse_bytes), AfterValidator(_plausible_bytes)]
#: Block ranges written as '0:6,6:16', a tuple of (start, stop) once loaded; stored as the string.
BlockRanges = Annotated[tuple[tuple[int, int], ...], BeforeValidator(parse_block_ranges),
                        PlainSerializer(format_block_ranges, return_type=str, when_used="json")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetConfig(_Section):
    path: str = Field(description="Dataset folder: behaviors.tsv plus news.tsv, items.tsv or videos.tsv.")
    item_file: str | None = Field(None, description="Item file name inside the folder; detected if unset.")
    min_seq_len: int = Field(5, ge=3, le=1000, description="Users with fewer interactions are dropped.")
    max_seq_len: int = Field(20, ge=1, le=4096, description="SASRec window L; each user keeps the last L+3 items.")
    lenient: bool = Field(False, description="Skip bad lines (and count them) instead of failing.")
    text_template: str | None = Field(
        None, description="Item text from named columns of the item file, e.g. \"{title}. {category}. {brand}\"; "
        "unset = the two-column layout (item_id<TAB>text)."
    )

    @field_validator("text_template", mode="before")
    @classmethod
    def _template(cls, v: object) -> object:
        if isinstance(v, dict):  # YAML reads a bare {title} as a mapping
            raise ValueError('must be a string: quote it, e.g. "{title}. {brand}"')
        if isinstance(v, str):
            parse_template(v)  # a malformed template is a config error at load, before any data is read
        return v

    @field_validator("item_file")
    @classmethod
    def _bare_name(cls, v: str | None) -> str | None:
        if v is not None and (Path(v).name != v or v in ("", ".", "..")):
            raise ValueError(f"must be a file name inside the dataset folder, got {v!r}")
        return v


class ModelConfig(_Section):
    architecture: Literal["sasrec", "dssm", "pop"] = Field("sasrec", description="Recommender.")
    item_tower: Literal["id", "text"] = Field(
        "id", description="id: a learned vector per item; text: the text_encoder's view of the item text."
    )
    embedding_dim: int = Field(64, ge=1, le=16384, description="Width d of user and item vectors.")
    num_blocks: int = Field(2, ge=1, le=64, description="SASRec transformer blocks.")
    num_heads: int = Field(2, ge=1, le=256, description="SASRec attention heads (must divide embedding_dim).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout in SASRec and the MLPs.")
    n_mlp_layers: int = Field(0, ge=0, le=32, description="DSSM: MLP layers on the user and item towers.")
    init: Literal["xavier", "normal"] = Field(
        "normal", description="Weight init of the recommender's own layers: normal = N(0, 0.02) (BERT, RecBole; "
        "as good as xavier with the method's recipe, better with CE and no weight decay), xavier (the reference).",
    )

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> ModelConfig:
        if self.embedding_dim % self.num_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must divide embedding_dim ({self.embedding_dim})"
            )
        return self


class TrainConfig(_Section):
    loss: Literal["ibce", "ce", "bce"] = Field(
        "ibce", description="ibce: in-batch softmax with logQ; ce: full softmax over all items; bce."
    )
    batch_size: int = Field(
        64, ge=2, le=1 << 20, description="Global batch: SASRec user windows (prefixes: as many as that many "
        "users hold on average), DSSM pairs."
    )
    examples: Literal["windows", "prefixes"] = Field(
        "prefixes", description="SASRec training examples: prefixes = every (prefix, next item) its own example, "
        "right-aligned as at inference and shuffled over all users (RecBole; better on every measured config); "
        "windows = a user's window with a loss at every position (SASRec, the TCF reference code). "
        "DSSM ignores it: it trains on (user, item) pairs.",
    )
    epochs: int = Field(50, ge=1, le=100_000, description="Maximum epochs.")
    lr: float = Field(1e-3, gt=0, le=10, description="AdamW learning rate.")
    weight_decay: float = Field(0.1, ge=0, le=100, description="AdamW decoupled weight decay.")
    patience: int = Field(
        10, ge=0, le=100_000, description="Stop after patience+1 evaluations without a better (smoothed) HR@10."
    )
    stop_smoothing: int = Field(
        5, ge=1, le=100, description="Patience counts evaluations since the raw HR@10 or the mean of the last N "
        "(1: raw alone) last improved, so one spike cannot end a run; the checkpoint kept is the best raw one."
    )
    eval_every: int = Field(1, ge=1, le=100_000, description="Validate every N epochs.")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="Mixed precision: auto = bf16 on CUDA, off on CPU."
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (torchrun sets one per rank).")
    threads: int | None = Field(
        None, ge=1, le=1024, description="CPU threads of torch; unset = the cores free when the process starts "
        "(OMP_NUM_THREADS, when set, wins). CPU results depend on it; it is recorded with every run.",
    )
    cuda_graph: bool = Field(
        True, description="Replay each training step from one CUDA graph where it can be (one CUDA process, "
        "loss ibce or ce, amp bf16 or off, no fine-tuned text tower); false: launch its kernels one by one.",
    )
    text_lr: float = Field(
        5e-5, gt=0, le=10, description="AdamW learning rate of the text item tower (LM blocks and projection)."
    )
    text_weight_decay: float = Field(0.01, ge=0, le=100, description="AdamW weight decay of the text item tower.")
    clip_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the text tower's gradient norm to this (after unscaling); null = off."
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", v):
            raise ValueError(f"unknown device {v!r}: auto, cpu, cuda or cuda:N")
        return v

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, v: object) -> object:
        return "off" if v is False else v  # YAML 1.1 reads a bare `off` as false


#: Evaluation keys that only some protocols read, with their defaults: the run hash leaves them out where they
#: change nothing, so a config that never names them hashes as it did before they existed.
_PROTOCOL_KEYS = {"protocol": "full", "cold_items": 0.1, "cold_seed": 0}


class EvalConfig(_Section):
    ks: list[int] = Field(default_factory=lambda: [10], description="Cut-offs for HR@K and NDCG@K.")
    batch_size: int = Field(1024, ge=1, le=1 << 24, description="Users scored per full-ranking batch.")
    protocol: Literal["full", "cold"] = Field(
        "full", description="full: every user's last item ranked against all items; cold: a share of the test-target "
        "items is held out of training entirely and only the users whose test target is one of them are tested."
    )
    cold_items: float = Field(
        _PROTOCOL_KEYS["cold_items"], gt=0, lt=1,
        description="cold: share of the items that are some user's test target made cold (at least one).",
    )
    cold_seed: int = Field(
        _PROTOCOL_KEYS["cold_seed"], ge=0, lt=1 << 31,
        description="cold: seed of the cold-item draw, apart from `seed`, so every model and seed meets the same "
        "cold items.",
    )
    popularity_buckets: int = Field(
        0, ge=0, le=20, description="Also report test HR/NDCG in this many equal-frequency buckets of the target's "
        "training popularity (0: off).",
    )

    @field_validator("ks")
    @classmethod
    def _sorted_with_10(cls, v: list[int]) -> list[int]:
        if any(k < 1 or k > 100_000 for k in v):
            raise ValueError("every K must be in 1..100000")
        return sorted(set(v) | {10})  # HR@10 drives model selection, so it is always computed

    @model_validator(mode="after")
    def _buckets_need_popularity(self) -> EvalConfig:
        if self.protocol == "cold" and self.popularity_buckets:
            raise ValueError("popularity_buckets needs protocol full: every cold test target has training "
                             "popularity 0, so all would share one bucket")
        return self

    def hashed(self) -> dict[str, Any]:
        """The section as a run's hash sees it: the cold keys only under ``cold``, the buckets only when on."""
        data = self.model_dump(mode="json")
        if self.protocol == "full":
            for key in _PROTOCOL_KEYS:
                data.pop(key)
        if not self.popularity_buckets:
            data.pop("popularity_buckets")
        return data


_SCHEDULE_KEYS = ("schedule", "chunk_tokens", "host_memory_budget", "read_bandwidth")


class TextEncoderConfig(_Section):
    model: str = Field(description="A local model folder (config.json + safetensors), or a Hugging Face repo id "
                       "org/name[@revision] resolved through the local cache (downloaded when online).")
    max_tokens: int = Field(30, ge=1, le=32768, description="Tokens per item text (longer texts are truncated).")
    dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="Compute dtype of pre-inference.")
    latent_dtype: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16", description="Dtype of the latents stored between block ranges."
    )
    gpu_memory_budget: ByteSize | None = Field(
        None, description="GPU memory for pre-inference, e.g. 8GiB; unset = the GPU's free memory."
    )
    ranges: BlockRanges | None = Field(None, description="Pinned block ranges, e.g. 0:6,6:16,16:24; unset = planned.")
    batch_size: int | None = Field(None, ge=1, le=1 << 20, description="Pinned pre-inference batch; unset = planned.")
    schedule: Literal["auto", "range", "chunk"] = Field(
        "auto", description="Pre-inference order: range = every item through one block range, boundaries on disk; "
        "chunk = a chunk of items through every range, boundaries in host memory; auto = the planner's choice."
    )
    chunk_tokens: int | None = Field(
        None, ge=1, le=1 << 34, description="Pinned tokens per chunk of a chunk schedule; unset = planned."
    )
    host_memory_budget: ByteSize | None = Field(
        None, description="Host memory a chunk schedule may pin for one chunk's hidden states, e.g. 8GiB; unset = "
        "half the available memory, at most 8GiB."
    )
    read_bandwidth: ByteSize | None = Field(
        None, description="Bytes per second the weights are read from disk at (the planner's cost model), e.g. "
        "3GB; unset = 2GB."
    )
    unfreeze: int = Field(
        0, ge=0, le=1024, description="Top blocks to fine-tune; pre-inference keeps the latents below them."
    )
    pooling: Literal["auto", "mean", "first", "last"] = Field(
        "auto", description="Item vector from token states: auto = a sentence-transformers folder's Pooling "
        "module, else the first token for BERT/RoBERTa and the masked mean for the rest."
    )
    normalize: Literal["auto"] | bool = Field(
        "auto", description="L2-normalise item vectors before the projection: auto = when a sentence-transformers "
        "folder has a Normalize module after its pooling, else not."
    )
    projection_layers: int = Field(
        1, ge=1, le=16, description="Layers of the projection MLP from LM width to embedding_dim."
    )

    def hashed(self) -> dict[str, Any]:
        """The section as a run's hash sees it: how pre-inference is scheduled does not change a result."""
        data = self.model_dump(mode="json")
        for key in _SCHEDULE_KEYS:
            data.pop(key)
        return data

    @field_validator("normalize", mode="before")
    @classmethod
    def _auto_or_bool(cls, v: object) -> object:
        if v == "auto" or isinstance(v, bool):
            return v
        raise ValueError(f"must be auto, true or false, got {v!r}")


class Config(_Section):
    name: str | None = Field(None, description="Run name; defaults to dataset-architecture-tower.")
    seed: int = Field(42, ge=0, lt=1 << 31, description="Seed for initialisation, shuffling and dropout.")
    dataset: DatasetConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    text_encoder: TextEncoderConfig | None = Field(None, description="Language model that encodes item texts.")

    @model_validator(mode="after")
    def _consistent_sections(self) -> Config:
        if self.model.item_tower == "text" and self.text_encoder is None:
            raise ValueError("model.item_tower is text but the config has no text_encoder section")
        return self

    @property
    def trains_text_tower(self) -> bool:
        """Whether the run trains on the text encoder's latents (pop ignores its item tower)."""
        return self.model.item_tower == "text" and self.model.architecture != "pop"

    @property
    def run_name(self) -> str:
        """The name, else dataset-architecture-tower; a text tower names its encoder and fine-tuned depth."""
        if self.name:
            return self.name
        base = f"{Path(self.dataset.path).name}-{self.model.architecture}"
        te = self.text_encoder
        if self.model.item_tower != "text" or te is None or self.model.architecture == "pop":
            return f"{base}-{self.model.item_tower}"
        return f"{base}-{Path(te.model).name}" + (f"-top{te.unfreeze}" if te.unfreeze else "-frozen")

    def resolved(self) -> Config:
        """A copy with the dataset and text-encoder paths made absolute (against the current folder): what a
        run or a job stores, so that it reads the same files wherever it resumes. A Hugging Face repo id is
        kept as written (each process resolves it through the cache)."""
        cfg = self.model_copy(deep=True)
        cfg.dataset.path = str(Path(cfg.dataset.path).resolve())
        if cfg.text_encoder is not None and hub_model(cfg.text_encoder.model) is None:  # a repo id stays one
            cfg.text_encoder.model = str(Path(cfg.text_encoder.model).expanduser().resolve())
        return cfg

    def hash(self) -> str:
        """Hash of everything that determines the result (the name does not); two protocols of one config are
        two runs (:meth:`EvalConfig.hashed`)."""
        data = self.model_dump(mode="json", exclude={"name"})
        if data["dataset"]["text_template"] is None:  # unset: the hashes of configs written before it existed
            del data["dataset"]["text_template"]
        data["eval"] = self.eval.hashed()
        if data["train"]["threads"] is None:  # unset (chosen per machine): the hashes of configs before it existed
            del data["train"]["threads"]
        if self.text_encoder is not None:
            data["text_encoder"] = self.text_encoder.hashed()
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _key_lines(text: str) -> dict[str, int]:
    """Map dotted keys to 1-based line numbers, so errors can point into the file."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                lines[key] = k.start_mark.line + 1
                walk(v, key + ".")

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def _set_dotted(data: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(source, key, f"'{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError("-S", text, "expected key=value, e.g. -S train.epochs=10")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError("-S", key, f"cannot parse value {raw!r}: {e}") from None
    return key, value


def _validate(data: dict, source: str, lines: dict[str, int]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or None
        where = source
        if key:
            # point at the deepest key that exists in the file
            parts = key.split(".")
            for n in range(len(parts), 0, -1):
                if ".".join(parts[:n]) in lines:
                    where = f"{source}:{lines['.'.join(parts[:n])]}"
                    break
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        raise ConfigError(where, key, msg) from None


def _expand(data: dict, source: str) -> list[tuple[dict, dict[str, Any]]]:
    """Expand ``runs`` (a list of variants) times ``sweep`` (cartesian) into run dicts, in order.

    ``sweep`` maps dotted keys to lists of values; ``runs`` is a list of mappings of dotted keys to
    values, for variants that change several keys together (e.g. DSSM with its own batch size).
    """
    sweep = data.pop("sweep", None) or {}
    runs = data.pop("runs", None) or [{}]
    if not isinstance(sweep, dict):
        raise ConfigError(source, "sweep", "must map dotted keys to lists of values")
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise ConfigError(source, "runs", "must be a list of mappings of dotted keys to values")
    keys = list(sweep)
    for k in keys:
        if not isinstance(sweep[k], list) or not sweep[k]:
            raise ConfigError(source, f"sweep.{k}", "must be a non-empty list of values")
    total = len(runs) * math.prod(len(sweep[k]) for k in keys)
    if total > MAX_RUNS:
        raise ConfigError(source, "sweep", f"expands to {total:,} runs; one config holds at most {MAX_RUNS:,}")
    out = []
    for variant in runs:
        for values in itertools.product(*(sweep[k] for k in keys)):
            d = copy.deepcopy(data)
            chosen = {**variant, **dict(zip(keys, values, strict=True))}
            for k, v in chosen.items():
                _set_dotted(d, str(k), v, f"{source}: runs/sweep")
            out.append((d, chosen))
    return out


def load_config_data(path: str | Path | None, base: dict | None = None) -> tuple[dict, str, dict[str, int]]:
    """Read YAML (or start from ``base``); returns (data, source, dotted key -> line)."""
    data: dict = copy.deepcopy(base) if base else {}
    source = "<config>"
    lines: dict[str, int] = {}
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(source, None, "config file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(source, None, f"cannot read config: {e}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark else source
            raise ConfigError(where, None, f"invalid YAML: {getattr(e, 'problem', e)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(source, None, "a config must be a YAML mapping")
        data.update(loaded)
        lines = _key_lines(text)
    return data, source, lines


def load_config(path: str | Path | None, overrides: Sequence[str] = (), base: dict | None = None,
                values: dict[str, Any] | None = None) -> list[Config]:
    """Load a config file and expand its runs and sweep into validated configs.

    Overrides win over the file, its ``runs`` and its ``sweep``: a key set with ``-S key=value`` (or in
    ``values``, dotted key -> value as is, for command-line flags that set a key) is no longer varied,
    and variants that become identical collapse into one run.
    """
    data, source, lines = load_config_data(path, base)
    parsed = [_parse_override(ov) for ov in overrides]
    parsed += [(key, value) for key, value in (values or {}).items() if value is not None]
    fixed = {key for key, _ in parsed}
    if isinstance(data.get("sweep"), dict):
        data["sweep"] = {k: v for k, v in data["sweep"].items() if k not in fixed}
    if isinstance(data.get("runs"), list):
        data["runs"] = [{k: v for k, v in r.items() if k not in fixed} if isinstance(r, dict) else r
                        for r in data["runs"]]
    for key in fixed:
        lines.pop(key, None)
    configs: list[Config] = []
    seen: set[str] = set()
    for d, chosen in _expand(data, source):
        for key, value in parsed:
            _set_dotted(d, key, value, "-S")
        cfg = _validate(d, source, lines)
        if (key := json.dumps(cfg.model_dump(mode="json"), sort_keys=True)) in seen:
            continue
        seen.add(key)
        varied = {k: v for k, v in chosen.items() if k != "name"}
        if varied and cfg.name and "name" not in chosen:
            suffix = ",".join(f"{k.split('.')[-1]}={v}" for k, v in varied.items())
            cfg.name = f"{cfg.name}[{suffix}]"
        configs.append(cfg)
    return configs
