"""The programs that run inside ranks, started as modules (`python -m labkit.ranks.X`, `deepspeed --module ...`).

One bootstrap: `launch.kit_env` puts labkit on PYTHONPATH for every process the kit starts. One error report and
teardown: `ranks.runtime.rank_guard`. Nothing here imports labkit.notebooks, labkit.chapters or labkit.jobs.
"""
