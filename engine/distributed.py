"""Process groups and the leader/follower executors of a multi-process engine (one process per GPU).

One process, the leader, runs the serving loop and the simulator's scheduler (engine.serving.serve,
unchanged); every step it broadcasts the executor's inputs (the `SchedulerOutput` of vLLM v1, here the
step's prefill chunks and decodes as numpy arrays) to the followers over a CPU (gloo) group, then all
ranks run the same step, their collectives meeting inside the model (engine.parallel). KV compaction is
broadcast too, so every rank's pool keeps the same regions. The tensor-parallel leader is rank 0; the
pipeline's leader is its last stage, which holds the logits.

`init` reads torchrun's environment (or takes rank/world/address for tests), sets NCCL_NVLS_ENABLE=0
before NCCL starts (NVLink multicast stays off, as the lent machines' notes require) and returns the
device of this rank.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from engine.serving import Executor


@dataclass(slots=True)
class Dist:
    """This process's place: rank, world size, torch device, the collective group's backend, a gloo group
    for control messages."""

    rank: int
    world: int
    device: str
    backend: str
    control: object


def init(backend: str | None = None, rank: int | None = None, world: int | None = None,
         init_method: str | None = None) -> Dist:  # fmt: skip
    """Join the process group: NCCL with one GPU per local rank when CUDA is there, gloo on the CPU."""
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink SHARP multicast off (machine notes)
    cuda = torch.cuda.is_available() and backend != "gloo"
    backend = backend or ("nccl" if cuda else "gloo")
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    device = "cpu"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        kw = {"device_id": torch.device(device)} if cuda else {}
        dist.init_process_group(
            backend, init_method=init_method or "env://", rank=rank, world_size=world, **kw
        )
    control = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    return Dist(rank, world, device, backend, control)


class Channel:
    """Objects broadcast from `src` to every rank over the gloo group (a step's inputs: small)."""

    def __init__(self, src: int, group) -> None:
        self.src, self.group = src, group

    def send(self, msg: tuple) -> None:
        dist.broadcast_object_list([msg], src=self.src, group=self.group)

    def recv(self) -> tuple:
        box = [None]
        dist.broadcast_object_list(box, src=self.src, group=self.group)
        return box[0]


class LeaderExecutor(Executor):
    """The leader's executor: each step and each KV compaction is broadcast to the followers first."""

    def __init__(self, model, pool_tokens: int, max_batch: int, channel: Channel, **kw) -> None:
        super().__init__(model, pool_tokens, max_batch, **kw)
        self.channel = channel

    def step(self, prefills, decodes):
        self.channel.send(("step", prefills, decodes))
        return super().step(prefills, decodes)

    def _compact(self) -> None:
        self.channel.send(("compact", self.region.copy(), self.length.copy()))
        super()._compact()

    def stop(self) -> None:
        """Release the followers from `follow`."""
        self.channel.send(("stop",))


def follow(executor: Executor, channel: Channel) -> int:
    """A follower's loop: run every step the leader broadcasts, until it says stop. Returns the steps run."""
    steps = 0
    while True:
        msg = channel.recv()
        if msg[0] == "stop":
            return steps
        if msg[0] == "compact":
            executor.region, executor.length = msg[1], msg[2]
            Executor._compact(executor)
        else:
            Executor.step(executor, msg[1], msg[2])
            steps += 1


def common_origin(group=None) -> float:
    """A `time.perf_counter()` reading that stands for the same instant on every rank of `group`.

    After a barrier, group rank 0's wall clock is broadcast and each rank places it on its own perf counter.
    A barrier alone does not give one instant: a rank descheduled as it leaves (two busy cores in CI) starts
    its clock milliseconds late, and a time sent by one rank then lands before an event it caused on the
    other. On one host the wall clock is the same clock, so the origin is exact to microseconds; across
    hosts it is as close as their clocks are kept (NTP: about a millisecond)."""
    dist.barrier(group=group)
    wall, perf = time.time(), time.perf_counter()
    sent = torch.tensor([wall], dtype=torch.float64)
    dist.broadcast(sent, src=0 if group is None else dist.get_global_rank(group, 0), group=group)
    return perf - (wall - float(sent[0]))


def spawn_local(fn, world: int, *args) -> list:
    """Run fn(rank, world, init_method, *args) in `world` forked CPU processes (gloo, a file rendezvous):
    the CPU path of every multi-process run, as tests and tiny benchmark runs use it. Returns each rank's
    return value (pickled back), by rank."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_child, (fn, world, f"file://{d}/rendezvous", d, args), nprocs=world,
                           start_method="fork")  # fmt: skip
        return [pickle.loads(Path(d, f"rank{r}.pkl").read_bytes()) for r in range(world)]


def _child(rank: int, fn, world: int, init_method: str, d: str, args: tuple) -> None:
    torch.set_num_threads(1)  # toy sizes: more threads only contend on a shared machine
    out = fn(rank, world, init_method, *args)
    Path(d, f"rank{rank}.pkl").write_bytes(pickle.dumps(out))
    if dist.is_initialized():
        dist.destroy_process_group()
