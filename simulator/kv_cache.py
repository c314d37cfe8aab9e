"""Paged KV cache: a pool of fixed-size blocks, handed out and returned by count.

The scheduler asks before it schedules (vLLM's `can_allocate`); running out is what triggers
preemption. No clock and no simulation here: the same pool backs the SimPy replica and the engine.
"""

from __future__ import annotations


class BlockPool:
    """A pool of `num_blocks` KV blocks of `block_size` tokens each."""

    __slots__ = ("num_blocks", "block_size", "free", "peak_used")

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 0 or block_size < 1:
            raise ValueError("num_blocks must be >= 0 and block_size >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free = num_blocks
        self.peak_used = 0

    @property
    def used(self) -> int:
        return self.num_blocks - self.free

    def blocks_for(self, tokens: int) -> int:
        """Blocks needed to hold `tokens` tokens."""
        return -(-tokens // self.block_size)

    def can_allocate(self, n: int, reserve: int = 0) -> bool:
        return n <= self.free - reserve

    def allocate(self, n: int) -> None:
        if n > self.free:
            raise RuntimeError(f"KV pool overdrawn: asked {n} blocks, {self.free} free")
        self.free -= n
        used = self.num_blocks - self.free
        if used > self.peak_used:
            self.peak_used = used

    def release(self, n: int) -> None:
        self.free += n
        if self.free > self.num_blocks:
            raise RuntimeError("KV pool released more blocks than it holds")
