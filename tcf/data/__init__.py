"""Datasets: reading and validating the TSV layout, splits, statistics, importers, synthetic data."""

from tcf.data.filter import filter_warm_items
from tcf.data.fingerprint import dataset_fingerprint
from tcf.data.importers import import_movielens, import_recbole
from tcf.data.prepare import EvalSplit, Prepared, prepare
from tcf.data.reader import BEHAVIORS_FILE, ITEM_FILES, RawDataset, load_dataset
from tcf.data.stats import dataset_stats
from tcf.data.synth import synth_dataset

__all__ = [
    "BEHAVIORS_FILE",
    "ITEM_FILES",
    "EvalSplit",
    "Prepared",
    "RawDataset",
    "dataset_fingerprint",
    "dataset_stats",
    "filter_warm_items",
    "import_movielens",
    "import_recbole",
    "load_dataset",
    "prepare",
    "synth_dataset",
]
