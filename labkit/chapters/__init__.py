"""Per-notebook glue: the plans, summaries and figures that belong to one chapter (cifar.py: notebook 04)."""
