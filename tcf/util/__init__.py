"""Helpers every layer shares: atomic writes, byte sizes, NVML access, torch.distributed glue, signals."""
