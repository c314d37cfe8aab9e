from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.kv_cache import BlockPool, blocks_for, padded


@given(st.integers(0, 10**12), st.integers(1, 10**6))
def test_blocks_for_is_ceil_division_on_ints_and_arrays(tokens, block_size):
    """The one block count: the fewest blocks holding every token, the same elementwise on arrays
    (the cluster's per-request checks), and `padded` is it in tokens."""
    n = blocks_for(tokens, block_size)
    assert n * block_size >= tokens > (n - 1) * block_size or tokens == n == 0
    arr = np.array([tokens, tokens + 1, max(tokens - 1, 0)], dtype=np.int64)
    assert blocks_for(arr, block_size).tolist() == [blocks_for(int(x), block_size) for x in arr]
    assert (
        padded(tokens, block_size)
        == n * block_size
        == BlockPool(0, block_size).blocks_for(tokens) * block_size
    )


def test_allocate_release_and_peak():
    p = BlockPool(10, 16)
    assert p.blocks_for(0) == 0 and p.blocks_for(1) == 1 and p.blocks_for(16) == 1 and p.blocks_for(17) == 2
    p.allocate(4)
    p.allocate(3)
    assert p.used == 7 and p.free == 3 and p.peak_used == 7
    p.release(5)
    assert p.used == 2 and p.peak_used == 7
    assert p.can_allocate(8) and not p.can_allocate(9) and not p.can_allocate(8, reserve=1)


def test_overdraw_and_over_release_raise():
    p = BlockPool(2, 4)
    with pytest.raises(RuntimeError, match="overdrawn"):
        p.allocate(3)
    with pytest.raises(RuntimeError, match="more blocks"):
        p.release(1)


class PerKeyPool:
    """Prefix caching with a reference count per key and per sequence, as a plain model to check against."""

    def __init__(self, num_blocks: int) -> None:
        self.free, self.cached, self.refs, self.present, self.evictions = (
            num_blocks,
            OrderedDict(),
            {},
            set(),
            0,
        )

    def allocate(self, n: int) -> None:
        for _ in range(max(n - (self.free - len(self.cached)), 0)):
            self.present.discard(self.cached.popitem(last=False)[0])
            self.evictions += 1
        self.free -= n

    def release(self, n: int, keys=()) -> None:
        self.free += n
        new = [k for k in keys if k not in self.present]
        self.present.update(new)
        self.cached.update(dict.fromkeys(reversed(new)))

    def lookup(self, keys, limit: int) -> tuple[int, int]:
        head = list(keys[:limit])
        n = next((i for i, k in enumerate(head) if k not in self.present), len(head))
        return n, sum(1 for k in head[:n] if not self.refs.get(k))

    def share(self, keys) -> None:
        for k in keys:
            if not self.refs.get(k):
                del self.cached[k]
                self.free -= 1
            self.refs[k] = self.refs.get(k, 0) + 1

    def unshare(self, keys) -> None:
        for k in keys:
            self.refs[k] -= 1
        idle = [k for k in keys if not self.refs[k]]
        self.cached.update(dict.fromkeys(reversed(idle)))
        self.free += len(idle)

    def publish(self, keys, held: int) -> bool:
        own = list(keys[held:])
        if any(k in self.present for k in own):
            return False
        self.present.update(own)
        for k in own:
            self.refs[k] = 1
        return True


def chains(shape: list[int]) -> list[np.ndarray]:
    """Hash chains of a small prefix tree: node i's parent is shape[i] (an earlier node, or -1 for a root);
    a node's id is larger than its parent's, as `PrefixKeys` interns them."""
    out = []
    for i, parent in enumerate(shape):
        parent = parent if parent < i else -1
        out.append(np.append(out[parent], i) if parent >= 0 else np.array([i]))
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(-1, 30), min_size=1, max_size=30),
    st.lists(st.tuples(st.sampled_from("spf"), st.integers(0, 1000)), max_size=80),
    st.integers(8, 60),
)
def test_chain_references_match_references_per_key(shape, ops, blocks):
    keyed = chains(shape)
    pool, ref = BlockPool(blocks, 16, prefix_caching=True), PerKeyPool(blocks)
    running = []  # [keys, shared, published]
    for op, x in ops:
        if op == "s":  # a sequence starts on a chain: shares what is cached, computes the rest
            keys = keyed[x % len(keyed)]
            got = pool.lookup(keys, len(keys))
            assert got == ref.lookup(keys, len(keys))
            n, take = got
            if len(keys) - n + take > pool.free:
                continue
            for p in (pool, ref):
                p.share(keys[:n])
                p.allocate(len(keys) - n)
            running.append([keys, keys[:n], False])
        elif running and op == "p":  # its prompt is done: its own blocks become shareable
            s = running[x % len(running)]
            if not s[2] and len(s[0]) > len(s[1]):
                done = pool.publish(s[0], len(s[1]))
                assert done == ref.publish(s[0], len(s[1]))
                s[1], s[2] = (s[0] if done else s[1]), True
        elif running and op == "f":  # it finishes: references dropped, its own full blocks stay cached
            keys, shared, _ = running.pop(x % len(running))
            for p in (pool, ref):
                p.unshare(shared)
                p.release(len(keys) - len(shared), keys[len(shared) :])
        assert pool.free == ref.free and pool.evictions == ref.evictions
        assert list(pool.cached) == list(ref.cached)
        in_use = {k for k, r in ref.refs.items() if r}
        assert set(np.flatnonzero(pool.refs[: len(shape)]).tolist()) == in_use
