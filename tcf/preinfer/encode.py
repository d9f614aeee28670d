"""A pre-inference job from a config: tokens -> plan -> block ranges -> a registered latents artifact.

The latents of a (dataset, model, tokenizer, max tokens, dtypes) combination are computed once: the
job works in ``artifacts/latents/.work-<hash>/`` (resumable, range by range) and renames it to
``artifacts/latents/<hash>/`` only when every range is done. An artifact also keeps the hidden states
at chosen depths (the inputs of fine-tuned top blocks); one that keeps every depth a run needs serves
it, so a sweep over unfreeze depths asks for all of them once (:func:`sweep_depths`) and encodes once.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from tcf.config import Config, TextEncoderConfig
from tcf.data.reader import load_dataset
from tcf.errors import ConfigError, TcfError
from tcf.lm.checkpoint import checkpoint_tensors, model_size, read_config
from tcf.lm.hub import hub_origin, resolve_model
from tcf.preinfer.latents import LatentStore
from tcf.preinfer.planner import BUDGET_KEY, DEFAULT_THROUGHPUT, BudgetTooSmall, Plan, plan_ranges
from tcf.preinfer.schedule import CPU_THROUGHPUT, Machine, host_available, plan_schedule
from tcf.util.artifacts import META, artifact_hash, artifact_path, read_meta
from tcf.util.atomic import write_atomic
from tcf.util.gpu import free_memory, get_provider
from tcf.util.lock import file_lock
from tcf.util.progress import Reporter, Tee

KEY_FORMAT = 3  # of the latents key below: a new format never matches an artifact of an old one


def model_dir_of(te: TextEncoderConfig) -> Path:
    """The model folder ``text_encoder.model`` names (a local folder, or a Hugging Face repo through the cache:
    :func:`tcf.lm.hub.resolve_model`), checked to hold a config.json of a supported family."""
    model_dir = resolve_model(te.model)
    read_config(model_dir)  # an unsupported family fails here, naming the supported ones
    return model_dir


def model_fingerprint(model_dir: Path) -> str:
    """Identity of a local checkpoint without reading its weights: path, config, and each weight file's
    safetensors header, size and modification time (a checkpoint rewritten in place gets a new one)."""
    h = hashlib.sha256(str(model_dir).encode())
    h.update((model_dir / "config.json").read_bytes())
    for f in sorted({Path(t.file) for t in checkpoint_tensors(model_dir).values()}):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            h.update(fh.read(min(n, 1 << 24)))
    return h.hexdigest()[:20]


def default_device(gpu: int = 0) -> torch.device:
    """Where pre-inference runs when nothing says otherwise: GPU ``gpu`` if there is one, else the CPU."""
    return torch.device("cuda", gpu) if torch.cuda.is_available() else torch.device("cpu")


def host_budget() -> int:
    """Pre-inference on the CPU: half the host memory that is available now (at least 1 GiB)."""
    return max(host_available() // 2, 1 << 30)


def compute_dtype(te: TextEncoderConfig, device: torch.device) -> str:
    """The dtype pre-inference computes in: the configured one on a GPU, fp32 on a CPU (no fast bf16 matmuls)."""
    return te.dtype if device.type == "cuda" else "fp32"


def resolve_budget(te: TextEncoderConfig, device: torch.device) -> int:
    """The one place a budget is decided: ``text_encoder.gpu_memory_budget``, else on a GPU its free memory
    (NVML, then CUDA), else on the CPU half the host memory available now."""
    if te.gpu_memory_budget is not None:
        return te.gpu_memory_budget
    if device.type != "cuda":
        return host_budget()
    provider = get_provider()
    free = free_memory(device.index or 0, provider)
    if free is None:
        reason = getattr(provider, "reason", None) or "no GPU"
        raise ConfigError(None, BUDGET_KEY, f"unset, and the free memory of GPU {device.index or 0} is unknown "
                                            f"({reason}); set one, e.g. 8GiB")
    return free


def make_plan(cfg: Config, n_items: int, device: torch.device, *, n_tokens: int | None = None,
              keep: tuple[int, ...] | list[int] = (), latents_root: Path = Path("artifacts"),
              schedule: str | None = None) -> Plan:
    """The plan for encoding ``n_items`` texts (``n_tokens`` real tokens) with the config's text encoder on
    ``device``, split at the ``keep`` depths: block ranges under the GPU budget and the schedule that fits
    the disk under ``latents_root`` and the host memory (:mod:`tcf.preinfer.schedule`). ``schedule``
    overrides ``text_encoder.schedule``. On the CPU the budget is host memory and the estimate a CPU one."""
    te = cfg.text_encoder
    if te is None:
        raise TcfError("text_encoder: the config has no text_encoder section")
    size = model_size(model_dir_of(te), te.dtype)
    compute = compute_dtype(te, device)
    throughput = DEFAULT_THROUGHPUT if device.type == "cuda" else CPU_THROUGHPUT * torch.get_num_threads()
    machine = Machine.probe(latents_root, te.host_memory_budget, te.read_bandwidth, throughput)
    return plan_schedule(size.footprint, size.shape, max_tokens=te.max_tokens, budget=resolve_budget(te, device),
                         n_items=n_items, n_tokens=n_tokens, machine=machine, schedule=schedule or te.schedule,
                         chunk_tokens=te.chunk_tokens, keep=keep, compute_dtype=compute,
                         latent_dtype=te.latent_dtype, ranges=te.ranges, batch_size=te.batch_size)


def minimum_budget(cfg: Config) -> int:
    """The least GPU memory the config's pre-inference can run in (one block range, one item at a time,
    the planner's margin included): what a worker waits for when the config sets no budget."""
    te = cfg.text_encoder
    if te is None:
        raise TcfError("text_encoder: the config has no text_encoder section")
    size = model_size(model_dir_of(te), te.dtype)
    try:
        plan_ranges(size.footprint, size.shape, max_tokens=te.max_tokens, budget=1, compute_dtype=te.dtype,
                    latent_dtype=te.latent_dtype)
    except BudgetTooSmall as e:
        return e.minimum_bytes
    return 1


def latents_key(cfg: Config, tokens_hash: str, compute_dtype: str) -> dict[str, Any]:
    """Everything that determines the latents' values: the token artifact (items + tokenizer + max
    tokens), the checkpoint (and for a model from the Hugging Face cache its repo and commit) and the dtypes.
    Which depths are kept is not part of it (see find_latents)."""
    te = cfg.text_encoder
    assert te is not None
    model_dir = model_dir_of(te)
    origin = hub_origin(model_dir)
    return {"tokens": tokens_hash, "model": model_fingerprint(model_dir), "dtype": compute_dtype,
            "latent_dtype": te.latent_dtype, "format": KEY_FORMAT, **(origin.record() if origin else {})}


def depth_of(cfg: Config) -> int | None:
    """The depth whose hidden states the config's fine-tuned tower reads (None when it is frozen)."""
    te = cfg.text_encoder
    if te is None or not te.unfreeze:
        return None
    n_blocks = model_size(model_dir_of(te)).shape.n_blocks
    if te.unfreeze > n_blocks:
        raise TcfError(f"text_encoder.unfreeze: {te.unfreeze} exceeds the model's {n_blocks} blocks")
    return n_blocks - te.unfreeze


def encoder_identity(cfg: Config) -> tuple:
    """Configs with the same identity share one pre-inference (unfreeze, pooling and the rest differ)."""
    te = cfg.text_encoder
    assert te is not None
    d = cfg.dataset
    return (str(Path(d.path).resolve()), d.item_file, d.lenient, str(model_dir_of(te)), te.max_tokens,
            te.dtype, te.latent_dtype)


def sweep_depths(configs: list[Config]) -> list[tuple[int, ...]]:
    """For each config, every depth that any config sharing its encoder needs: one pass serves them all."""
    identity = [encoder_identity(c) if c.trains_text_tower else None for c in configs]
    needed: dict[tuple, set[int]] = {}
    for cfg, key in zip(configs, identity, strict=True):
        if key is not None:
            needed.setdefault(key, set()).update(d for d in [depth_of(cfg)] if d is not None)
    return [() if key is None else tuple(sorted(needed[key])) for key in identity]


def find_latents(root: Path, key: dict[str, Any], depths: set[int]) -> Path | None:
    """A finished latents artifact for ``key`` that keeps at least ``depths`` (fewest extra depths wins)."""
    best: tuple[int, str, Path] | None = None
    for meta_path in sorted((root / "latents").glob(f"*/{META}")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("key") == key and depths <= set(meta.get("depths", ())):
            cand = (len(meta["depths"]), meta_path.parent.name, meta_path.parent)
            best = cand if best is None or cand < best else best
    return None if best is None else best[2]


def finish_artifact(work: Path, final: Path, meta: dict[str, Any]) -> None:
    """Write meta.json last and rename the work folder into place."""
    write_atomic(work / META, json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(work, final)


def _look_up_or_plan(cfg: Config, db_path: Path, keep: list[int], compute: str, device: torch.device,
                     store: Any, hold: ExitStack, ui: Reporter | None) -> dict[str, Any]:
    """Rank 0's share: tokenize (once), register the tokens, and find a finished artifact that serves
    ``keep`` or plan the ranges (with a boundary at each kept depth) of a new one.

    Before planning it takes the lock of these latents (held in ``hold`` until the artifact is in place):
    a second run that needs them at the same time waits for the first, then reuses what it made."""
    from tcf.lm.tokenize import token_table

    te = cfg.text_encoder
    assert te is not None
    root = db_path.resolve().parent / "artifacts"
    raw = load_dataset(cfg.dataset.path, cfg.dataset.item_file, lenient=cfg.dataset.lenient,
                       text_template=cfg.dataset.text_template)
    table, tokens_path, _ = token_table(raw, model_dir_of(te), te.max_tokens, root)
    key = latents_key(cfg, tokens_path.name, compute)
    store.register_artifact("tokens", tokens_path.name, tokens_path, read_meta(tokens_path))
    found = find_latents(root, key, set(keep))
    if found is None:
        waiting = (lambda: ui.stage("waiting for another process encoding these items")) if ui else None
        hold.enter_context(file_lock(lock_path(root, key), what="pre-inference of these items", wait=True,
                                     on_wait=waiting))
        found = find_latents(root, key, set(keep))
    if found is not None:
        store.register_artifact("latents", found.name, found, read_meta(found))
        return {"tokens": str(tokens_path), "key": key, "found": str(found)}
    work = work_folder(root, key, keep)
    plan = make_plan(cfg, len(table.item_keys), device, n_tokens=int(table.lengths.sum()), keep=keep,
                     latents_root=root, schedule=_resumed_schedule(work, cfg))
    return {"tokens": str(tokens_path), "key": key, "found": None, "plan": plan}


def work_folder(root: Path, key: dict[str, Any], keep: list[int]) -> Path:
    """Where the latents of ``key`` keeping ``keep`` are computed before they are renamed into place."""
    final = artifact_path(root, "latents", {**key, "depths": keep})
    return final.parent / f".work-{final.name}"


def _resumed_schedule(work: Path, cfg: Config) -> str | None:
    """An unfinished work folder's own schedule when the config leaves it to the planner (its progress is kept)."""
    te = cfg.text_encoder
    assert te is not None
    if te.schedule != "auto":
        return None
    state = LatentStore(work).state() if (work / "state.json").is_file() else {}
    if state.get("schedule") == "chunk" and state.get("chunk_done"):
        return "chunk"
    if state.get("boundaries"):
        return "range"
    return None


def lock_path(root: Path, key: dict[str, Any]) -> Path:
    """The lock one pre-inference of ``key`` (whatever depths it keeps) holds while it runs: an empty file
    that stays (removing it could let a third process lock a new file while a second holds the old one)."""
    return root / "latents" / ".locks" / artifact_hash(key)


def run_infer_job(cfg: Config, db_path: Path, *, gpu: int = 0, ui: Reporter | None = None,
                  device: torch.device | None = None, keep_depths: tuple[int, ...] = ()) -> tuple[Path, bool]:
    """Tokenize (once) and pre-infer the config's items; returns (latents artifact, whether it was reused).

    The artifact keeps the hidden states at the depth the config's fine-tuned blocks start from and at
    ``keep_depths`` (those of the other runs of a sweep). Interrupted jobs resume from their last
    committed block range when run again. Under torchrun each rank encodes a share of the items on its
    own GPU; rank 0 tokenizes, plans, records and renames.
    """
    from tcf.lm.pooling import POOLINGS
    from tcf.lm.tokenize import load_token_table
    from tcf.preinfer.latents import DTYPES
    from tcf.preinfer.runner import run_preinference
    from tcf.store.events import EventWriter
    from tcf.store.records import open_store
    from tcf.util.dist import barrier, broadcast_object, init_distributed

    te = cfg.text_encoder
    if te is None:
        raise TcfError("text_encoder: the config has no text_encoder section")
    model_dir = model_dir_of(te)
    n_blocks = model_size(model_dir).shape.n_blocks
    own = depth_of(cfg)
    keep = sorted({d for d in keep_depths if 0 < d < n_blocks} | ({own} if own is not None else set()))
    ctx = init_distributed("auto" if torch.cuda.is_available() else "cpu")
    device = device or (ctx.device if ctx.distributed else default_device(gpu))
    compute = compute_dtype(te, device)
    store = open_store(db_path) if ctx.is_main else None  # a Slurm job's: its record file
    with ExitStack() as hold:
        job = broadcast_object(_look_up_or_plan(cfg, db_path, keep, compute, device, store, hold, ui)
                               if store is not None else {}, ctx)
        if job["found"]:
            return Path(job["found"]), True
        table = load_token_table(job["tokens"])
        work = work_folder(db_path.resolve().parent / "artifacts", job["key"], keep)
        final = work.parent / work.name.removeprefix(".work-")
        work.parent.mkdir(parents=True, exist_ok=True)
        reporter = Tee(EventWriter(store, f"infer:{final.name}"), ui) if store is not None else None
        run_preinference(model_dir, table.ids, table.lengths, table.item_keys, job["plan"], work,
                         dtype=DTYPES[compute], latent_dtype=DTYPES[te.latent_dtype], device=device,
                         keep_depths=tuple(keep), reporter=reporter, ctx=ctx)
        if store is not None:
            meta = {"kind": "latents", "hash": final.name, "key": job["key"], "model": str(model_dir),
                    "n_items": len(table.item_keys), "n_blocks": n_blocks, "max_tokens": te.max_tokens,
                    "latent_dtype": te.latent_dtype, "depths": sorted(keep), "poolings": list(POOLINGS),
                    "tokens": job["tokens"], "ranges": [(r.start, r.stop) for r in job["plan"].ranges],
                    "ranks": ctx.world_size}
            finish_artifact(work, final, meta)
            store.register_artifact("latents", final.name, final, meta)
    barrier(ctx)
    return final, False
