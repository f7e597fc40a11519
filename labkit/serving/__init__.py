"""Serving a model from a DeepSpeed job (`labkit serve`, notebook 07): every rank in every forward pass, rank 0 on HTTP.

models.py, config.py, service.py (inside the ranks), local.py and job.py: docs/architecture.md says what each holds.
"""
