"""Build one stage of a model (embedding and/or blocks [start, stop) and/or final norm) from its checkpoint.

    stage = load_stage("models/opt-125m", 10, 12, include_embedding=False, include_final=True)
    out = stage(latents_after_block_9, mask)
    stage.tensors_read   # only model.decoder.layers.10.*, layers.11.* and final_layer_norm.*

The stage is built on the meta device and its parameters are assigned straight from the
safetensors files, so memory holds only the range's weights, once.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from tcf.errors import TcfError
from tcf.lm.base import BlockStack
from tcf.lm.checkpoint import read_config
from tcf.lm.families import family
from tcf.lm.transfer import to_device
from tcf.lm.weights import TORCH_DTYPES, CheckpointReader


def load_config(model_dir: str | Path, attn_implementation: str = "sdpa") -> PretrainedConfig:
    """The model's transformers config, once :func:`~tcf.lm.checkpoint.read_config` has checked config.json."""
    read_config(model_dir)
    try:
        return AutoConfig.from_pretrained(str(model_dir), local_files_only=True,
                                          attn_implementation=attn_implementation)
    except (OSError, ValueError, KeyError) as exc:
        raise TcfError(f"{model_dir}/config.json: {exc}") from exc


def empty_stage(config: PretrainedConfig, start: int, stop: int, include_embedding: bool,
                include_final: bool) -> BlockStack:
    """The stage's modules on the meta device (shapes, no memory): what a checkpoint must fill."""
    with torch.device("meta"):
        return family(config.model_type).stack_class()(config, start, stop, include_embedding, include_final)


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
    reader = CheckpointReader(model_dir)
    stage = empty_stage(config, start, stop, include_embedding, include_final)
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
        raise RuntimeError(f"{type(stage).__name__}: tensors left unmaterialised: {unloaded}")
    stage.tensors_read = list(reader.read_names)
    return stage.eval()


def check_checkpoint(model_dir: str | Path) -> None:
    """Every tensor the whole model needs is in the checkpoint with the shape its config implies, so a
    broken checkpoint fails before any work; reads the safetensors headers only."""
    config = load_config(model_dir)
    reader = CheckpointReader(model_dir)
    n_blocks = family(config.model_type).stack_class().count_blocks(config)
    stage = empty_stage(config, 0, n_blocks, True, True)
    for local, tensor in stage.state_dict().items():
        info = reader.info(reader.resolve(stage.checkpoint_names(local)))
        if tuple(info.shape) != tuple(tensor.shape):
            raise TcfError(f"{info.file}: tensor {info.name!r} has shape {list(info.shape)}, but config.json "
                           f"implies {list(tensor.shape)}")
