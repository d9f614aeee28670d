"""How fast a block range's weights reach the GPU: tcf's pinned ring vs a plain ``tensor.to("cuda")``.

Loads blocks [0, --blocks) of a checkpoint (page cache warm: each variant runs twice, the second counts)
and prints GB/s for each number of ring workers.

    python bench/weight_load.py /tmp/tcf-bench/opt-6.7b --blocks 10 --workers 2,4,6,8
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import torch

from tcf.lm import loader, transfer
from tcf.lm.weights import CheckpointReader


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir")
    p.add_argument("--blocks", type=int, default=10)
    p.add_argument("--workers", default="2,4,6,8")
    args = p.parse_args(argv)
    device = torch.device("cuda")
    real = transfer.to_device

    reader = CheckpointReader(args.model_dir)

    def plain(infos, dtypes, device, dtype, workers=0):  # tensor.to() from the memory-mapped file
        views = [reader.get(i.name) for i in infos]
        return [t.to(device, dtype if t.is_floating_point() else t.dtype) for t in views]

    variants = [("plain .to()", plain)] + [
        (f"ring x{w}", lambda *a, w=w: real(*a, workers=w)) for w in map(int, args.workers.split(","))]
    for name, fn in variants:
        for _ in range(2):  # the second load counts (the first warms the page cache and the pinned ring)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with mock.patch.object(loader, "to_device", fn):
                stage = loader.load_stage(args.model_dir, 0, args.blocks, include_embedding=True,
                                          include_final=False, dtype=torch.bfloat16, device=device)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            nbytes = sum(t.numel() * t.element_size() for t in stage.state_dict().values())
            del stage
            torch.cuda.empty_cache()
        print(f"{name:12s} {nbytes / 2**30:6.2f} GiB in {seconds:6.3f} s = {nbytes / seconds / 1e9:6.1f} GB/s",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
