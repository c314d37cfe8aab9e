"""The `inferplan` command: the simulator's verbs, plus `calibrate` (the GPU half) and `app` (the planner UI).

The version is simulator's `__version__`, the one place it is written.
"""

from simulator import __version__

__all__ = ["__version__"]
