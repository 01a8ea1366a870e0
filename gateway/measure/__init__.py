"""Measuring a model server: `tollgate bench-model` (load levels, scored tasks, and the
routing file's tokens_per_second)."""
