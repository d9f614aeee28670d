"""Helpers every layer shares: atomic files and folders, content-addressed artifact folders, byte sizes and
durations, NVML access, torch.distributed glue, the progress interface, signals."""
