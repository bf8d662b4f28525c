"""Stage 3: classify an input stack with a model (strips, patches, engines, worker threads,
majority filter)."""
