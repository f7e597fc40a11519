"""Per-notebook glue: one module per chapter, each the tested functions its notebook calls."""
