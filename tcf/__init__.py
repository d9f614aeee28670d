"""tcf: text-based collaborative filtering experiments."""

__version__ = "0.1.0"
