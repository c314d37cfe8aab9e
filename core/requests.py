"""The requests both executors serve, and the keys their KV blocks are shared by.

`Requests` is what a workload generates (simulator/workload.py) and what the simulator's replicas and our
engine's serving loop (engine/serving.py) replay; `PrefixKeys` turns a request's prompt identity into the
block keys prefix caching matches on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Requests:
    """The generated requests. Arrival times are seconds from 0, NaN for later turns of a conversation
    (those arrive a think time after the previous turn's response)."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    class_id: np.ndarray | None = None
    class_names: tuple[str, ...] = ("all",)
    # Prompt identity for prefix caching: per request a tuple of (segment id, tokens); requests whose
    # segments agree share those tokens. None for a request that shares nothing with any other.
    segments: list | ClassSegments | None = None
    next_turn: np.ndarray | None = None  # id of the conversation's next turn, -1 if none
    think_s: np.ndarray | None = None  # think time before that next turn
    # Leading tokens of a request's stream that another request can ever share (-1: all of them,
    # prompt and output, as in a conversation). Blocks past it need no key: nobody will look them up.
    shareable: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.arrival_s)


class PrefixKeys:
    """Keys of the full KV blocks of each request's token stream (prompt, then its output).

    Block j's key stands for every token up to the end of block j: the segments before the one that
    block ends in, that segment's id, and j. Equal keys mean equal token prefixes (vLLM's hash chain).
    `forget(rid)` drops the keys kept for a finished request (None when none are kept per request).
    """

    def __init__(self, requests: Requests, block_size: int) -> None:
        self.segments = requests.segments
        self.output = requests.output_tokens
        self.shareable = requests.shareable
        self.B = block_size
        self._ids: dict[tuple, int] = {}  # key -> small integer id, what the KV pool indexes by
        self._prefix_ids: dict[tuple, int] = {}
        self._cache: dict[int, np.ndarray] = {}  # keys of requests whose whole stream is shareable
        # keys by (the shareable part of) segments: one per system prompt
        self._memo: dict[tuple, np.ndarray] = {}

    def __call__(self, rid: int, tokens: int) -> np.ndarray | list:
        keys = self._cache.get(rid)
        if keys is None:
            keys = self._chain(rid)
        n = tokens // self.B
        return keys if n >= len(keys) else keys[:n]  # (the whole chain as the same array each time)

    def _chain(self, rid: int) -> np.ndarray | list:
        """Keys of the shareable part of request `rid`'s stream; kept per request only when it is the whole
        stream (a conversation's), else shared by every request with the same shareable segments."""
        segs = self.segments[rid] if self.segments is not None else None
        if segs is None:
            return []
        limit = int(self.shareable[rid]) if self.shareable is not None else -1
        if limit < 0 or limit > segs[0][1]:  # (else only the first segment counts)
            segs = segs + ((-2 - 2 * rid, int(self.output[rid])),)
        if limit < 0:
            keys = self._cache[rid] = self._keys(segs)
            return keys
        segs = _truncate(segs, limit)
        keys = self._memo.get(segs)
        if keys is None:
            keys = self._memo[segs] = self._keys(segs)
        return keys

    def forget(self, rid: int) -> None:
        self._cache.pop(rid, None)

    def _keys(self, segs: tuple) -> np.ndarray:
        B, keys, start, ids = self.B, [], 0, self._ids
        for i, (sid, n) in enumerate(segs):
            end = start + n
            if end // B > start // B:  # blocks whose last token falls in this segment
                pid = self._prefix_ids.setdefault(segs[:i], len(self._prefix_ids))
                keys.extend(ids.setdefault((pid, sid, j), len(ids)) for j in range(start // B, end // B))
            start = end
        return np.array(keys, dtype=np.int64)


class ClassPrefixKeys(PrefixKeys):
    """`PrefixKeys` of single turns (`ClassSegments`): what a request can share is its class's system
    prompt, if any, so its keys are its class's chain."""

    forget = None

    def __init__(self, requests: Requests, block_size: int) -> None:
        super().__init__(requests, block_size)
        self._by_class: list = [None] * len(self.segments.heads)  # each class's chain, once looked up

    def __call__(self, rid: int, tokens: int) -> np.ndarray | list:
        ci = self.segments.cls[rid]
        keys = self._by_class[ci]
        if keys is None:
            head = self.segments.heads[ci]
            keys = self._by_class[ci] = [] if head is None else self._memo.setdefault(head, self._keys(head))
        n = tokens // self.B
        return keys if n >= len(keys) else keys[:n]


def prefix_keys(requests: Requests, block_size: int) -> PrefixKeys:
    """The prefix keys of a workload's requests."""
    single = isinstance(requests.segments, ClassSegments)
    return (ClassPrefixKeys if single else PrefixKeys)(requests, block_size)


def _truncate(segs: tuple, tokens: int) -> tuple:
    if segs[0][1] >= tokens:  # within the first segment (a system prompt): the common case
        return ((segs[0][0], tokens),) if tokens > 0 else ()
    out, left = [], tokens
    for sid, n in segs:
        if left <= 0:
            break
        out.append((sid, min(n, left)))
        left -= n
    return tuple(out)


class ClassSegments:
    """Segments of single-turn requests, built when asked for: a class's system prompt (if it is shared),
    then the request's own tokens. (A million tuples built up front cost a second and 170 MB.)"""

    __slots__ = ("heads", "cls", "user")

    def __init__(self, heads: list, cls: list, user: np.ndarray) -> None:
        self.heads, self.cls, self.user = heads, cls, user

    def __len__(self) -> int:
        return len(self.cls)

    def __getitem__(self, rid: int) -> tuple | None:
        head = self.heads[self.cls[rid]]
        return None if head is None else head + ((2 * rid, int(self.user[rid])),)

    def __iter__(self):
        return map(self.__getitem__, range(len(self.cls)))
