"""The job queue: queued experiments, the processes that run them, and what they report.

``queue`` is the state in experiments.db (add, claim, cancel, retry, lost-job detection), ``worker``
supervises job processes on this machine's GPUs, ``slurm`` hands jobs to Slurm and reads its states back,
``records`` is a Slurm job's folder (its description in, its records merged), ``job_main`` is the job
process itself, local or on a compute node.
"""
