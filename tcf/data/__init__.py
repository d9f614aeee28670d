"""Datasets: reading and validating the TSV layout, splits, statistics, importers, synthetic data."""
