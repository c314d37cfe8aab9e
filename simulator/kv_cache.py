"""Paged KV cache: a pool of fixed-size blocks, with optional prefix caching.

The scheduler asks before it schedules (vLLM's `can_allocate`); running out is what triggers
preemption. With prefix caching, a full block is identified by a key standing for its tokens and
every token before them (vLLM's block hash chain): blocks with the same key are shared by reference
count, and a block nobody references stays cached, counted as free, until an allocation needs it
and evicts the least recently released one. No clock and no simulation here: the same pool backs
the SimPy replica and the engine.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable, Sequence
from itertools import takewhile


class BlockPool:
    """A pool of `num_blocks` KV blocks of `block_size` tokens each."""

    __slots__ = ("num_blocks", "block_size", "free", "peak_used", "cached", "refs", "evictions")

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = False) -> None:
        if num_blocks < 0 or block_size < 1:
            raise ValueError("num_blocks must be >= 0 and block_size >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free = num_blocks  # unreferenced blocks, cached ones included
        self.peak_used = 0
        # prefix caching: key -> None for free blocks that still hold their tokens (LRU first), and
        # key -> reference count for blocks in use that others may share
        self.cached: OrderedDict[Hashable, None] | None = OrderedDict() if prefix_caching else None
        self.refs: Counter = Counter()
        self.evictions = 0

    @property
    def used(self) -> int:
        return self.num_blocks - self.free

    def blocks_for(self, tokens: int) -> int:
        """Blocks needed to hold `tokens` tokens."""
        return -(-tokens // self.block_size)

    def can_allocate(self, n: int, reserve: int = 0) -> bool:
        return n <= self.free - reserve

    def allocate(self, n: int) -> None:
        """Take n fresh blocks; with prefix caching, plain free blocks first, then evict cached ones (LRU)."""
        if n > self.free:
            raise RuntimeError(f"KV pool overdrawn: asked {n} blocks, {self.free} free")
        if self.cached:
            evict = n - (self.free - len(self.cached))
            for _ in range(max(evict, 0)):
                self.cached.popitem(last=False)
            self.evictions += max(evict, 0)
        self.free -= n
        used = self.num_blocks - self.free
        if used > self.peak_used:
            self.peak_used = used

    def release(self, n: int, full_keys: Sequence[Hashable] = ()) -> None:
        """Return n blocks a sequence owned; those with keys stay cached (unless the key is cached already).

        Later blocks go first in the LRU order, as vLLM frees them, so chains are evicted from the tail.
        """
        self.free += n
        if self.free > self.num_blocks:
            raise RuntimeError("KV pool released more blocks than it holds")
        if self.cached is not None and full_keys:
            cached, refs = self.cached, self.refs
            for k in reversed(full_keys):
                if k not in cached and k not in refs:
                    cached[k] = None

    # ---------------------------------------------------------------- prefix caching
    def match(self, keys: Sequence[Hashable], limit: int) -> int:
        """How many leading blocks of `keys` (at most `limit`) are cached or in use."""
        if self.cached is None or not keys:
            return 0
        cached, refs = self.cached, self.refs
        head = keys[:limit]
        if head and head[-1] in refs and all(map(refs.__contains__, head)):
            return len(head)  # the common case: every block is in use by someone
        return sum(1 for _ in takewhile(lambda k: k in refs or k in cached, head))

    def cost_of_sharing(self, keys: Sequence[Hashable]) -> int:
        """Free blocks that sharing `keys` takes (cached blocks nobody uses yet)."""
        return len(self.cached.keys() & keys) if self.cached else 0

    def share(self, keys: Sequence[Hashable]) -> None:
        """Reference matched blocks; cached free ones become used."""
        cached = self.cached
        moved = cached.keys() & keys if cached else ()
        for k in moved:
            del cached[k]
        self.free -= len(moved)
        self.refs.update(keys)
        used = self.num_blocks - self.free
        if used > self.peak_used:
            self.peak_used = used

    def unshare(self, keys: Sequence[Hashable]) -> None:
        """Drop references; blocks nobody references go back to the free list, still cached."""
        refs, cached = self.refs, self.cached
        for k in reversed(keys):
            r = refs[k] - 1
            if r:
                refs[k] = r
            else:
                del refs[k]
                cached[k] = None
                self.free += 1

    def publish(self, keys: Sequence[Hashable]) -> int:
        """A sequence's own blocks became full: make them shareable. Returns how many it now shares.

        A key that is already cached or in use elsewhere is left alone (vLLM keeps one block per key).
        """
        refs, cached = self.refs, self.cached
        n = 0
        for k in keys:
            if k in refs or k in cached:
                continue
            refs[k] = 1
            n += 1
        return n
