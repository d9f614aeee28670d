"""tcf: text-based collaborative filtering experiments."""

from tcf.util.threads import wait_passively

__version__ = "0.1.0"

# before anything imports torch: idle OpenMP threads sleep instead of spinning against other processes
wait_passively()
