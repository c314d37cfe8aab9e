"""Paged KV cache: a pool of fixed-size blocks, with optional prefix caching.

The scheduler asks before it schedules (vLLM's `can_allocate`); running out is what triggers
preemption. With prefix caching, a full block is identified by a key standing for its tokens and
every token before them (vLLM's block hash chain): blocks with the same key are shared by reference
count, and a block nobody references stays cached, counted as free, until an allocation needs it
and evicts the least recently released one. No clock and no simulation here: the same pool backs
the SimPy replica and the engine.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

Tokens = TypeVar("Tokens", int, np.ndarray)


def blocks_for(tokens: Tokens, block_size: int) -> Tokens:
    """Blocks of `block_size` tokens needed to hold `tokens` tokens: ceil division, of an int or an array."""
    return -(-tokens // block_size)


def padded(n: int, multiple: int) -> int:
    """`n` rounded up to a multiple of `multiple`."""
    return blocks_for(n, multiple) * multiple


class BlockPool:
    """A pool of `num_blocks` KV blocks of `block_size` tokens each.

    With prefix caching, block keys are small integers (`workload.PrefixKeys` interns them) and the
    per-key state lives in numpy arrays, so sharing a 100-block system prompt is a few vector operations.
    The keys given to `lookup`, `share` and `unshare` are always the leading keys of one chain, and
    the blocks a sequence references are a leading part of its chain; so along a chain the reference
    counts never increase, and when the last of some leading keys is referenced, all of them are.

    A chain's last key names it (a key stands for every token before it), so references are counted
    per chain first: `holders` counts the sequences holding each chain, and a key's count in `refs` is
    the number of held chains through it. A system prompt that every running request holds is then a
    dict update per request; the per-key arrays change only when a chain gains its first holder or
    loses its last. (Only whether a key is referenced at all matters, for lookups and eviction.)
    """

    __slots__ = (
        "num_blocks",
        "block_size",
        "free",
        "peak_used",
        "cached",
        "refs",
        "present",
        "holders",
        "evictions",
        "version",
    )

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = False) -> None:
        if num_blocks < 0 or block_size < 1:
            raise ValueError("num_blocks must be >= 0 and block_size >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free = num_blocks  # unreferenced blocks, cached ones included
        self.peak_used = 0
        # prefix caching: key -> None for free blocks that still hold their tokens (LRU first); per key,
        # how many running sequences reference its block, and whether a block with that key exists
        self.cached: OrderedDict[int, None] | None = OrderedDict() if prefix_caching else None
        self.refs = np.zeros(0, dtype=np.int32)
        self.present = np.zeros(0, dtype=bool)
        self.holders: dict[int, int] = {}  # a held chain's last key -> sequences holding it
        self.evictions = 0
        self.version = 0  # bumped whenever which keys are cached or shared changes

    @property
    def used(self) -> int:
        return self.num_blocks - self.free

    def blocks_for(self, tokens: int) -> int:
        """Blocks needed to hold `tokens` tokens."""
        return blocks_for(tokens, self.block_size)

    def can_allocate(self, n: int, reserve: int = 0) -> bool:
        return n <= self.free - reserve

    def allocate(self, n: int) -> None:
        """Take n free blocks; with prefix caching, plain free blocks first, then evict cached ones (LRU)."""
        if n > self.free:
            raise RuntimeError(f"KV pool overdrawn: asked {n} blocks, {self.free} free")
        if self.cached:
            evict = n - (self.free - len(self.cached))
            for _ in range(max(evict, 0)):
                self.present[self.cached.popitem(last=False)[0]] = False
            if evict > 0:
                self.evictions += evict
                self.version += 1
        self.free -= n
        used = self.num_blocks - self.free
        if used > self.peak_used:
            self.peak_used = used

    def release(self, n: int, full_keys: np.ndarray | Sequence[int] = ()) -> None:
        """Return n blocks a sequence owned; those with keys stay cached (unless the key exists already).

        Later blocks go first in the LRU order, as vLLM frees them, so chains are evicted from the tail.
        """
        self.free += n
        if self.free > self.num_blocks:
            raise RuntimeError("KV pool released more blocks than it holds")
        if self.cached is not None and len(full_keys):
            keys = self._fit(full_keys)
            new = keys[~self.present[keys]]
            self.present[new] = True
            self.cached.update(dict.fromkeys(new[::-1].tolist()))
            self.version += 1

    # ---------------------------------------------------------------- prefix caching
    def drop_cache(self) -> None:
        """Forget every cached block: the replica stopped and its GPU memory is gone (nothing may be held)."""
        if self.free != self.num_blocks:
            raise RuntimeError("KV pool dropped its cache while blocks are held")
        if self.cached:
            self.present[list(self.cached)] = False
            self.cached.clear()
            self.version += 1

    def _fit(self, keys) -> np.ndarray:
        """Keys as an int array, with the per-key arrays grown to cover them.

        A sequence's keys increase along its chain (`PrefixKeys` interns them in chain order: once a
        block is new, every later block is too), so the last key is the largest.
        """
        keys = np.asarray(keys, dtype=np.int64)
        if len(keys) and keys[-1] >= len(self.refs):
            top = int(keys[-1]) + 1
            if top > len(self.refs):
                grow = max(top, 2 * len(self.refs), 1024)
                self.refs = np.concatenate([self.refs, np.zeros(grow - len(self.refs), dtype=np.int32)])
                self.present = np.concatenate([self.present, np.zeros(grow - len(self.present), dtype=bool)])
        return keys

    def lookup(self, keys, limit: int) -> tuple[int, int]:
        """(leading blocks of `keys` cached or in use, at most `limit`; how many of those are free)."""
        if self.cached is None or not len(keys) or limit <= 0:
            return 0, 0
        if limit < len(keys):
            keys = keys[:limit]
        if int(keys[-1]) in self.holders:  # a sequence holds this very chain: all of it is in use
            return len(keys), 0
        head = self._fit(keys)
        if self.refs[head[-1]]:  # the whole chain is in use (references never increase along it)
            return len(head), 0
        hit = self.present[head]
        n = len(head) if hit.all() else int(np.argmin(hit))
        return n, (int(np.count_nonzero(self.refs[head[:n]] == 0)) if n else 0)

    def share(self, keys) -> None:
        """Reference matched blocks (all cached or in use, so seen by `lookup`); cached free ones become used."""
        if not len(keys):
            return
        last = int(keys[-1])
        n = self.holders.get(last, 0)
        self.holders[last] = n + 1
        if n:  # the chain is held already: nothing else changes
            return
        self.version += 1
        keys = self._fit(keys)
        refs = self.refs
        if refs[last]:  # all in use already: no free block becomes used
            refs[_span(keys)] += 1
            return
        idle = keys[refs[keys] == 0]
        for k in idle.tolist():
            del self.cached[k]
        self.free -= len(idle)
        refs[keys] += 1  # a request's keys are distinct
        used = self.num_blocks - self.free
        if used > self.peak_used:
            self.peak_used = used

    def unshare(self, keys) -> None:
        """Drop a reference to a chain `share` or `publish` gave; blocks nobody references go back to the
        free list, still cached."""
        if not len(keys):
            return
        last = int(keys[-1])
        n = self.holders[last] - 1
        if n:
            self.holders[last] = n
            return
        del self.holders[last]
        self.version += 1
        refs = self.refs
        refs[_span(keys)] -= 1
        if refs[last]:  # all still in use
            return
        keys = np.asarray(keys, dtype=np.int64)
        idle = keys[refs[keys] == 0]
        if len(idle):
            self.cached.update(dict.fromkeys(idle[::-1].tolist()))
            self.free += len(idle)

    def publish(self, keys, held: int = 0) -> bool:
        """A sequence holding the first `held` of `keys` (from `share`) makes its own full blocks after
        them shareable, and holds all of `keys` from then on. Only when none of its own keys exists yet
        (vLLM keeps one block per key); returns whether they were published."""
        keys = self._fit(keys)
        own = keys[held:]
        if self.present[own].any():
            return False
        self.present[own] = True
        self.refs[own] = 1  # new keys: no chain held them
        holders = self.holders
        holders[int(keys[-1])] = 1
        if held:  # it leaves its old chain for the new, longer one
            old = int(keys[held - 1])
            n = holders[old] - 1
            if n:
                holders[old] = n
                self.refs[_span(keys[:held])] += 1  # the old chain is still held by others
            else:
                del holders[old]
        self.version += 1
        return True


def _span(keys):
    """`keys` as a slice when they are consecutive integers (a chain interned in one go, such as a system
    prompt's): cheaper to index with than the keys themselves. A chain's keys increase along it."""
    first, last = int(keys[0]), int(keys[-1])
    return slice(first, last + 1) if last - first == len(keys) - 1 else keys
