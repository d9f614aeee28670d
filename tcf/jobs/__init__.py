"""The job queue: queued experiments, workers that run them as OS processes, and what they report.

``queue`` is the state in experiments.db (add, claim, cancel, retry, lost-job detection), ``worker``
supervises job processes on a set of GPUs, ``exec`` is the job process itself, ``views`` summarises a
job's progress for the UIs, ``process`` tells whether a recorded process still lives.
"""
