"""The GPU half: models built from a ModelSpec, timed kernels and timed model steps (torch lives here only)."""
