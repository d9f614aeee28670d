"""Which attention kernels a stack of LM blocks may use when it runs on many batch shapes.

Not cuDNN's: torch picks it on H100/H200 for bf16, and it plans every new (batch, length) shape on the
host, about 50 ms each, and loads its libraries at the first one. A fine-tuned tower's shape changes with
every step: on an H200 that tripled the first epoch of a top-2 OPT-1.3B SASRec (16.5 s -> 5.3 s without
it; 8.1 -> 4.1 s in the second; bench/ddp_check.py --sdpa). Pre-inference meets a new shape at every
length and batch size: a torch profile of an OPT-6.7B-shape range on an H100 (32,768 items, 12 batches)
spent 0.68 s of host time in ``_cudnn_attention_forward``, paid in full by each rank of a multi-GPU run
(bench/results/infer_first_pass_profile_h100.txt).
"""

from torch.nn.attention import SDPBackend

ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
