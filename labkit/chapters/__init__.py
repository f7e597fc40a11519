"""Per-notebook glue: the tables, sentences and parameter checks one notebook (and its CLI command) shows, one module
per notebook, built on the library modules (labkit.zero, labkit.memory, labkit.jobs, ...) that know nothing of them."""
