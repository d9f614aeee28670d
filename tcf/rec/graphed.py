"""A training step replayed from one CUDA graph.

At the method's batch sizes a SASRec or DSSM step is hundreds of small kernels; launched one by one
from Python the GPU mostly waits for the host (an ID-SASRec step at 200k users x 50k items took ~10 ms,
a fraction of it GPU work). Captured once, a step is one launch. What it needs: shapes that do not
depend on the data (the objective's ``static_loss``; a short last batch is padded with a row of
weight 0), no host syncs, and a capturable optimizer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

# Eager steps before capture: libraries set up their handles and workspaces on the first calls, which a
# capture must not record. These are real training steps of the run.
WARMUP_STEPS = 3


class GraphedStep:
    """Forward, backward, gradient clipping and the optimizer step of one batch, as one CUDA graph.

    ``loss_fn(index)`` maps the static batch of row indices to ``(loss_sum, n_terms)``; rows equal to
    ``pad_index`` must weigh nothing. ``clip`` is (parameters, max norm) or None. The graph is captured
    after :data:`WARMUP_STEPS` eager steps; every tensor it touches (parameters, gradients, optimizer
    state) must stay where it is afterwards, so load a checkpoint before the first step, not after.
    """

    def __init__(self, loss_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 optimizer: torch.optim.Optimizer, clip: tuple[list[nn.Parameter], float] | None,
                 batch_size: int, pad_index: int, device: torch.device, amp_dtype: torch.dtype | None):
        self.loss_fn, self.optimizer, self.clip = loss_fn, optimizer, clip
        self.pad_index, self.device, self.amp_dtype = pad_index, device, amp_dtype
        self.index = torch.full((batch_size,), pad_index, dtype=torch.long, device=device)
        self.loss_total = torch.zeros((), device=device)  # sum of the steps' mean losses since reset
        self.graph: torch.cuda.CUDAGraph | None = None
        self._eager_steps = 0

    def step(self, batch: torch.Tensor) -> None:
        """One optimizer step on ``batch`` (row indices on the device, at most the batch size)."""
        n = len(batch)
        self.index[:n].copy_(batch)
        if n < len(self.index):
            self.index[n:].fill_(self.pad_index)
        if self.graph is not None:
            self.graph.replay()
        elif self._eager_steps < WARMUP_STEPS:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.optimizer.zero_grad(set_to_none=True)
                self._body()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._eager_steps += 1
        else:
            # Gradients captured from None are written in place by every replay; nothing may zero them later.
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body()
            self.graph = graph
            graph.replay()  # the capture recorded this batch's step without running it

    def _body(self) -> None:
        autocast = (torch.autocast("cuda", dtype=self.amp_dtype, cache_enabled=False) if self.amp_dtype
                    else contextlib.nullcontext())
        with autocast:
            loss_sum, n_terms = self.loss_fn(self.index)
        loss = loss_sum.float() / n_terms.clamp_min(1.0)
        loss.backward()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.clip[0], self.clip[1])
        self.optimizer.step()
        self.loss_total += loss.detach()
