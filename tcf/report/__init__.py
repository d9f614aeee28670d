"""The read side of experiments.db: runs loaded once, cells (mean ± std, deltas), pivots, plots, exports."""
