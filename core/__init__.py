"""What both executors share — the simulator's SimPy replicas and our engine's serving loop on a GPU.

Model spec (`model_spec`), GPU profile schema (`hardware`), the step cost model both calibration and the
simulator use (`cost_model`, `parallelism`), the scheduler and its KV block pool (`scheduler`, `kv_cache`),
the requests served (`requests`) and the records a run keeps (`records`), user-facing errors (`errors`,
`limits`) and shipped data (`resources`). Imports neither the simulator nor the engine, nor torch.
"""
