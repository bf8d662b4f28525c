"""Stage 1: from downloads to a model input stack on one grid (Sentinel-2, OpenStreetMap,
heights from a surface model, stacking by channel name)."""
