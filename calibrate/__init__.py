"""Measure a GPU and fit the cost model: detect → sweep (resumable) → fit (scipy) → profile → validate.

`python -m calibrate` drives `engine/` over a sweep plan, stores every measurement as a JSONL line,
fits the roofline efficiencies of `core.cost_model` to them and writes a hardware profile that
the simulator loads by name. Modules that the CPU tests import do not import torch at top level.
"""
