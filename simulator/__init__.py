"""inferplan's simulator: forecast LLM serving (latency, throughput, memory, cost) without a GPU.

Entry points: `python -m simulator`, `simulator.simulation.simulate(scenario)`, and `simulator.api`.
Imports no torch.
"""

__version__ = "0.1.0"
