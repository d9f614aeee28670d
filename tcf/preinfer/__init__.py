"""Block-wise pre-inference: the planner (ranges that fit a GPU-memory budget), the runner, the latent store,
and the job that turns a config into a registered latents artifact (encode.py).
"""
