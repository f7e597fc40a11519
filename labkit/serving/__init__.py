"""Serving a model from a DeepSpeed job (`labkit serve`, notebook 07): every rank in every forward pass, rank 0 on HTTP.

models.py (what can be served, its tensor-parallel split, what a valid request is), config.py (ServeConfig: the one
validated description every rank receives), service.py (inside the ranks: the collective protocol, FastAPI on rank 0,
heartbeat, watchdog, stop), local.py (start the ranks on this machine, an HTTP client),
job.py (the same service as a job: the launcher's command, the Service that reaches rank 0 on worker 0).
"""
