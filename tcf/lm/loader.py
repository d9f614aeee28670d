"""Build one stage of a model (embedding and/or blocks [start, stop) and/or final norm) from its checkpoint.

    stage = load_stage("models/opt-125m", 10, 12, include_embedding=False, include_final=True)
    out = stage(latents_after_block_9, mask)
    stage.tensors_read   # only model.decoder.layers.10.*, layers.11.* and final_layer_norm.*

The stage is built on the meta device and its parameters are assigned straight from the
safetensors files, so memory holds only the range's weights, once.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from tcf.errors import TcfError
from tcf.lm.base import BlockStack, adapter_class
from tcf.lm.families import check_supported
from tcf.lm.transfer import to_device
from tcf.lm.weights import TORCH_DTYPES, CheckpointReader


def load_config(model_dir: str | Path, attn_implementation: str = "sdpa") -> PretrainedConfig:
    """The model's HF config; TcfError when the directory or its config.json is missing or unreadable."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise TcfError(f"model directory not found: {model_dir}")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise TcfError(f"{model_dir}: no config.json")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise TcfError(f"{config_file}: not a JSON object ({exc})") from exc
    check_supported(model_type)  # unsupported families fail here, naming the supported ones
    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise TcfError(f"{model_dir}/config.json: {exc}") from exc
    config._attn_implementation = attn_implementation
    return config


def load_stage(
    model_dir: str | Path,
    start: int,
    stop: int,
    include_embedding: bool,
    include_final: bool,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> BlockStack:
    """A module (eval mode) that runs exactly: [embedding] -> blocks [start, stop) -> [final norm].

    ``stage.tensors_read`` lists the checkpoint tensor names read to build it. On a GPU the weights are
    copied through a pinned ring (:mod:`tcf.lm.transfer`); on the CPU, weights stored in ``dtype`` are
    not copied at all: they stay views of the checkpoint's pages.
    """
    config = load_config(model_dir, attn_implementation)
    cls = adapter_class(config.model_type)
    reader = CheckpointReader(model_dir)
    with torch.device("meta"):
        stage = cls(config, start, stop, include_embedding, include_final)
    device = torch.device(device)
    names = {local: reader.resolve(stage.checkpoint_names(local)) for local in stage.state_dict()}
    if device.type == "cuda":
        infos = [reader.info(name) for name in names.values()]
        tensors = to_device(infos, [TORCH_DTYPES[i.dtype] for i in infos], device, dtype)
        reader.read_names.extend(names.values())
    else:
        sources = [reader.get(name) for name in names.values()]
        tensors = [t.to(dtype=dtype) if t.is_floating_point() else t for t in sources]
    state = dict(zip(names, tensors, strict=True))
    stage.load_state_dict(state, strict=True, assign=True)
    # the non-persistent buffers built on CPU (position ids, rotary frequencies)
    stage.to(device=device)
    unloaded = [name for name, t in [*stage.named_parameters(), *stage.named_buffers()] if t.is_meta]
    if unloaded:  # a family built a buffer on meta that no checkpoint tensor fills: a bug, not user input
        raise RuntimeError(f"{cls.__name__}: tensors left unmaterialised: {unloaded}")
    stage.tensors_read = list(reader.read_names)
    return stage.eval()


def check_checkpoint(model_dir: str | Path) -> None:
    """Every tensor the whole model needs is in the checkpoint with the shape its config implies, so a
    broken checkpoint fails before any work; reads the safetensors headers only."""
    config = load_config(model_dir)
    cls = adapter_class(config.model_type)
    reader = CheckpointReader(model_dir)
    with torch.device("meta"):
        stage = cls(config, 0, cls.count_blocks(config), True, True)
    for local, tensor in stage.state_dict().items():
        info = reader.info(reader.resolve(stage.checkpoint_names(local)))
        if tuple(info.shape) != tuple(tensor.shape):
            raise TcfError(f"{info.file}: tensor {info.name!r} has shape {list(info.shape)}, but config.json "
                           f"implies {list(tensor.shape)}")
