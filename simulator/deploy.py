"""A deployable answer: the `vllm serve …` command line that runs a scenario's configuration (vLLM's engine
arguments, `vllm serve --help`), with notes where vLLM needs something the flags cannot say."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from simulator.scenario import Scenario

# The Hugging Face repos of the catalogue models (core/catalogue/README.md).
HF_REPOS = {
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "llama-3.1-70b": "meta-llama/Llama-3.1-70B",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "qwen2.5-32b": "Qwen/Qwen2.5-32B-Instruct",
    "mistral-7b": "mistralai/Mistral-7B-Instruct-v0.3",
    "mixtral-8x7b": "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "gemma-3-12b": "google/gemma-3-12b-it",
    "deepseek-v2-lite": "deepseek-ai/DeepSeek-V2-Lite",
    "deepseek-v3": "deepseek-ai/DeepSeek-V3",
}
DTYPE_FLAGS = {
    "bf16": ["--dtype", "bfloat16"],
    "fp16": ["--dtype", "float16"],
    "fp8": ["--quantization", "fp8"],
}
CHECKPOINT_NOTES = {
    "int8": "int8 weights: serve a W8A8 INT8 checkpoint (e.g. made with llm-compressor); vLLM reads its "
    "quantization from the checkpoint's config",
    "int4": "int4 weights: serve an AWQ or GPTQ int4 checkpoint of the model; vLLM reads its quantization "
    "from the checkpoint's config (Marlin kernels where the GPU has them)",
}


@dataclass(slots=True)
class ServeCommand:
    argv: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def line(self) -> str:
        return shlex.join(self.argv)


def repo_of(model: str) -> str:
    """What `vllm serve` loads: the catalogue model's Hugging Face repo, or the folder of a config.json."""
    if model.lower() in HF_REPOS:
        return HF_REPOS[model.lower()]
    p = Path(model)
    return str(p.parent if p.suffix == ".json" else p)


def vllm_serve(sc: Scenario) -> ServeCommand:
    """The `vllm serve` command for one replica of the scenario's configuration (the first group's)."""
    hw, sv = sc.hardware, sc.serving
    notes: list[str] = []
    pp = hw.pipeline_parallel
    tp = hw.gpus_per_replica // pp
    argv = ["vllm", "serve", repo_of(sc.model)]
    if sc.model.lower() not in HF_REPOS:
        notes.append(
            "the model is a local config.json: point vllm serve at the folder holding it and its weights"
        )
    if tp > 1:
        argv += ["--tensor-parallel-size", str(tp)]
    if pp > 1:
        argv += ["--pipeline-parallel-size", str(pp)]
    if hw.expert_parallel:
        argv += ["--enable-expert-parallel"]
    argv += DTYPE_FLAGS.get(sv.precision.weight_dtype, [])
    if sv.precision.weight_dtype in CHECKPOINT_NOTES:
        notes.append(CHECKPOINT_NOTES[sv.precision.weight_dtype])
    if sv.precision.kv_dtype == "fp8":
        argv += ["--kv-cache-dtype", "fp8"]
    argv += [
        "--max-num-seqs",
        str(sv.batching.max_num_seqs),
        "--max-num-batched-tokens",
        str(sv.batching.max_num_batched_tokens),
    ]
    argv += ["--gpu-memory-utilization", f"{sv.memory.gpu_memory_utilization:g}"]
    argv += ["--enable-chunked-prefill" if sv.batching.chunked_prefill else "--no-enable-chunked-prefill"]
    # vLLM turns prefix caching on by default; the planner's default is off, so say it either way
    argv += ["--enable-prefix-caching" if sv.caching.prefix_caching else "--no-enable-prefix-caching"]
    if sv.memory.block_size != 16:
        argv += ["--block-size", str(sv.memory.block_size)]
    if sv.memory.max_model_len is not None:
        argv += ["--max-model-len", str(sv.memory.max_model_len)]
    if sv.admission.scheduling_policy == "priority":
        argv += ["--scheduling-policy", "priority"]
    if sv.cuda_graphs == "decode_only":
        argv += ["--compilation-config", json.dumps({"cudagraph_mode": "FULL_DECODE_ONLY"})]
    if sv.async_scheduling:  # (vLLM 0.14 and later turn it on by default; --no-async-scheduling turns it off)
        argv += ["--async-scheduling"]
    spec = sv.speculative
    if spec is not None:
        if spec.method == "draft":
            cfg = {
                "model": repo_of(spec.draft_model or ""),
                "num_speculative_tokens": spec.num_speculative_tokens,
            }
        else:
            cfg = {
                "method": "ngram",
                "num_speculative_tokens": spec.num_speculative_tokens,
                "prompt_lookup_max": 4,
            }
            notes.append("self-speculation: n-gram lookup shown; use the model's MTP heads where it has them")
        argv += ["--speculative-config", json.dumps(cfg)]
    if sv.batching.mode == "static":
        notes.append("vLLM always batches continuously: the forecast's static batching has no vLLM setting")
    replicas = sc.cluster.replicas if not sc.cluster.groups else None
    if replicas and replicas > 1:
        notes.append(f"run {replicas} such servers (one per replica) behind a load balancer")
    if sc.cluster.groups or sc.disaggregation is not None:
        notes.append("this is the first replica group's command; the other groups (or the disaggregated "
                     "decode pool, with --kv-transfer-config) need their own")  # fmt: skip
    return ServeCommand(argv, notes)
