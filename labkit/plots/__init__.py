"""matplotlib figures for the notebooks, one module per topic; each helper returns a Figure (Agg-safe, no pyplot)."""
