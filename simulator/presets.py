"""Named workload mixes a planner starts from (the app's presets; any can be written out as YAML).

Length shapes follow the built-in traces (Azure LLM inference trace 2023, CC-BY-4.0): chat prompts
around a few hundred to a thousand tokens with shorter answers, code completion with long prompts
and short outputs, summarisation with long documents.
"""

from __future__ import annotations

WORKLOADS: dict[str, dict] = {
    "chat (Poisson, lognormal lengths)": {
        "arrival": {"process": "poisson", "rate_per_s": 4.0},
        "prompt_tokens": {"dist": "lognormal", "median": 600, "sigma": 0.8, "max": 8000},
        "output_tokens": {"dist": "lognormal", "median": 150, "sigma": 0.7, "max": 1500},
        "num_requests": 400,
    },
    "code completion (bursty, long prompts)": {
        "arrival": {"process": "gamma", "rate_per_s": 4.0, "cv": 2.0},
        "prompt_tokens": {"dist": "lognormal", "median": 1500, "sigma": 0.7, "max": 16000},
        "output_tokens": {"dist": "lognormal", "median": 30, "sigma": 0.8, "max": 512},
        "num_requests": 400,
    },
    "summarisation (arxiv trace lengths)": {
        "trace": "summarization",
        "arrival": {"process": "poisson", "rate_per_s": 1.0},
        "prompt_tokens": {"dist": "trace"},
        "output_tokens": {"dist": "trace"},
        "num_requests": 300,
    },
    "conversation trace replay (Azure 2023)": {
        "trace": "conversation",
        "arrival": {"process": "trace"},
        "prompt_tokens": {"dist": "trace"},
        "output_tokens": {"dist": "trace"},
        "num_requests": 400,
    },
}
