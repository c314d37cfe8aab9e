"""Requests from a workload: arrival times and prompt/output lengths as numpy arrays.

Arrivals: Poisson, gamma (burstiness by coefficient of variation), constant, or a trace's own times.
Lengths: fixed, uniform, lognormal, exponential, or a trace's columns. Each aspect draws from its
own stream spawned from the scenario seed, so changing one setting does not reshuffle the others.
"""

from __future__ import annotations

import numpy as np

from core.errors import ConfigError
from core.requests import ClassSegments, Requests
from simulator.concurrency import closed_loop
from simulator.rate_schedule import constant_rate, scheduled_arrivals
from simulator.scenario import Exponential, Fixed, FromTrace, Lognormal, Uniform, Workload
from simulator.trace import Trace, read_trace

DEFAULT_REQUESTS = 1000


def _loop(values: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(values))
    return np.tile(values, reps)[:n]


def _loop_times(t: np.ndarray, n: int) -> np.ndarray:
    """Repeat a trace's arrival times back to back, each pass starting one mean gap after the last."""
    period = t[-1] + (t[-1] / max(len(t) - 1, 1))
    reps = -(-n // len(t))
    return (t[None, :] + period * np.arange(reps)[:, None]).ravel()[:n]


def _lengths(spec, n: int, rng: np.random.Generator, trace_col: np.ndarray | None) -> np.ndarray:
    if isinstance(spec, Fixed):
        return np.full(n, spec.value, dtype=np.int64)
    if isinstance(spec, Uniform):
        return rng.integers(spec.min, spec.max + 1, size=n)
    if isinstance(spec, Lognormal):
        v = np.round(spec.median * np.exp(spec.sigma * rng.standard_normal(n)))
        return np.clip(v, spec.min, spec.max).astype(np.int64)
    if isinstance(spec, Exponential):
        return rng.geometric(1.0 / max(spec.mean, 1.0), size=n).astype(np.int64)
    if isinstance(spec, FromTrace):
        assert trace_col is not None
        return _loop(trace_col, n)
    raise ConfigError(f"unknown length distribution {spec!r}")


def _gaps(w: Workload, n: int, rng: np.random.Generator, rate: float | None = None) -> np.ndarray:
    rate = w.arrival.rate_per_s if rate is None else rate
    if w.arrival.process == "poisson":
        return rng.exponential(1.0 / rate, size=n)
    if w.arrival.process == "gamma":
        shape = 1.0 / w.arrival.cv**2
        return rng.gamma(shape, 1.0 / (rate * shape), size=n)
    return np.full(n, 1.0 / rate)


def _arrivals(w: Workload, n: int | None, trace: Trace | None, rng: np.random.Generator) -> np.ndarray:
    """Arrival times: n of them, or all before duration_s."""
    if w.schedule is not None:
        rate = constant_rate(w.schedule)
        if rate is None:
            return scheduled_arrivals(w, n, lambda k: _gaps(w, k, rng, 1.0), DEFAULT_REQUESTS)
        # one step: exactly the arrivals of arrival.rate_per_s at that rate
        w = w.model_copy(
            update={"arrival": w.arrival.model_copy(update={"rate_per_s": rate}), "schedule": None}
        )
    if w.arrival.process == "trace":
        t0 = trace.arrival_s
        if t0[-1] == 0 and (w.arrival.rate_per_s or w.duration_s):
            # (the loop's period and the rescaling factor both divide by the trace's span)
            setting = "arrival.rate_per_s" if w.arrival.rate_per_s else "duration_s"
            raise ConfigError(
                f"{trace.source}: workload.{setting}: all {len(t0)} arrivals of the trace are at one instant, "
                "so it has no rate to rescale or replay over time; use num_requests, or arrival.process "
                "poisson with rate_per_s"
            )
        if w.arrival.rate_per_s:
            t0 = t0 * (len(t0) / max(t0[-1], 1e-9)) / w.arrival.rate_per_s
        if w.duration_s:
            per_pass = t0[-1] + t0[-1] / max(len(t0) - 1, 1)
            arrival = _loop_times(t0, int(len(t0) * (w.duration_s / per_pass + 1)) + 1)
            return arrival[arrival < w.duration_s]
        return _loop_times(t0, n or len(t0))
    if w.duration_s:
        est = int(w.duration_s * w.arrival.rate_per_s * 1.2 + 50)
        arrival = np.cumsum(_gaps(w, est, rng))
        while arrival[-1] < w.duration_s:
            arrival = np.concatenate([arrival, arrival[-1] + np.cumsum(_gaps(w, est, rng))])
        return arrival[arrival < w.duration_s]
    n = n or (len(trace.prompt_tokens) if trace else DEFAULT_REQUESTS)
    gaps = _gaps(w, n, rng)
    gaps[0] = 0.0 if w.arrival.process == "constant" else gaps[0]
    return np.cumsum(gaps)


SYSTEM_PROMPT_ID = -(10**12)  # segment ids: system prompts below this, trace hash ids above TRACE_HASH_ID
TRACE_HASH_ID = 10**13
TRACE_HASH_BLOCK = 512  # tokens per hash id in the Mooncake trace


def output_segment(rid: int) -> int:
    """Segment id of a request's output tokens (they reappear in its conversation's next prompt)."""
    return -2 - 2 * rid


def generate(w: Workload, seed: int) -> Requests:
    """Draw the requests of a workload; deterministic for a given seed."""
    arr_rng, p_rng, o_rng, c_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    trace = read_trace(w.trace) if w.trace else None
    if w.arrival.process == "trace" and trace is not None and trace.arrival_s is None:
        raise ConfigError(
            f"workload.trace {w.trace!r} has no arrival times; use arrival.process poisson/gamma/constant"
        )
    if w.classes:
        if any(c.schedule is not None for c in w.classes):
            # one more arrival stream per class (spawned after the four above, which stay as they were)
            streams = [
                np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4 + len(w.classes))
            ]
            arrival, cls = _class_arrivals(w, trace, arr_rng, c_rng, streams[4:])
            return _generate_classes(w, trace, arrival, cls, arr_rng, p_rng, o_rng, c_rng)
        arrival = _arrivals(w, w.num_requests, trace, arr_rng)
        shares = np.array([c.share for c in w.classes], dtype=float)
        cls = c_rng.choice(len(w.classes), size=len(arrival), p=shares / shares.sum())
        return _generate_classes(w, trace, arrival, cls, arr_rng, p_rng, o_rng, c_rng)
    if w.arrival.process == "closed_loop":
        n = w.num_requests or (len(trace.prompt_tokens) if trace else DEFAULT_REQUESTS)
        prompt = _lengths(w.prompt_tokens, n, p_rng, trace.prompt_tokens if trace else None)
        output = _lengths(w.output_tokens, n, o_rng, trace.output_tokens if trace else None)
        return closed_loop(w.arrival.concurrency, prompt, output)
    arrival = _arrivals(w, w.num_requests, trace, arr_rng)
    n = len(arrival)
    prompt = _lengths(w.prompt_tokens, n, p_rng, trace.prompt_tokens if trace else None)
    output = _lengths(w.output_tokens, n, o_rng, trace.output_tokens if trace else None)
    segments = shareable = None
    if trace is not None and trace.hash_ids is not None and w.prompt_tokens.dist == "trace":
        hashes = trace.hash_ids
        segments = [_hash_segments(hashes[i % len(hashes)], int(prompt[i]), i) for i in range(n)]
        shareable = np.array(
            [min(len(hashes[i % len(hashes)]) * TRACE_HASH_BLOCK, int(prompt[i])) for i in range(n)],
            dtype=np.int64,
        )
    return Requests(
        np.asarray(arrival, dtype=float),
        prompt.astype(np.int64),
        output.astype(np.int64),
        segments=segments,
        shareable=shareable,
    )


def _hash_segments(ids: list[int], prompt: int, rid: int) -> tuple | None:
    if not ids:
        return None
    segs, left = [], prompt
    for h in ids:
        if left <= 0:
            break
        segs.append((TRACE_HASH_ID + int(h), min(TRACE_HASH_BLOCK, left)))
        left -= TRACE_HASH_BLOCK
    if left > 0:
        segs.append((2 * rid, left))  # tokens beyond the listed hashes are the request's own
    return tuple(segs)


def _single_turns(
    classes, arrival: np.ndarray, cls: np.ndarray, user: np.ndarray, out: np.ndarray
) -> Requests:
    """`_generate_classes` when no class has sessions: one request per arrival, built with numpy."""
    n = len(arrival)
    shared = np.array([c.shared_prefix_tokens for c in classes], dtype=np.int64)
    start = np.array([c.prefix_position == "start" for c in classes])
    prompt = user + shared[cls]
    shareable = np.where(start, shared, 0)[cls]
    # a system prompt at the start is shared with the class; at the end (or none) nothing is
    heads = [
        ((SYSTEM_PROMPT_ID - ci, int(shared[ci])),) if start[ci] and shared[ci] else None
        for ci in range(len(classes))
    ]
    return Requests(
        np.asarray(arrival, dtype=float),
        prompt,
        out,
        class_id=cls.astype(np.int64),
        class_names=tuple(c.name for c in classes),
        segments=ClassSegments(heads, cls.tolist(), user),
        next_turn=np.full(n, -1, dtype=np.int64),
        think_s=np.zeros(n),
        shareable=shareable,
    )


def _class_arrivals(
    w: Workload, trace, arr_rng, c_rng, class_rngs: list[np.random.Generator]
) -> tuple[np.ndarray, np.ndarray]:
    """Arrivals and classes when some classes have schedules of their own: the others share the workload's
    arrivals by their shares; each scheduled class draws its own over duration_s; merged in time order."""
    classes = w.classes
    shared = [i for i, c in enumerate(classes) if c.schedule is None]
    times, owner = [], []
    if shared:
        arrival = _arrivals(w, None, trace, arr_rng)
        shares = np.array([classes[i].share for i in shared], dtype=float)
        times.append(arrival)
        owner.append(
            np.asarray(shared)[c_rng.choice(len(shared), size=len(arrival), p=shares / shares.sum())]
        )
    for i, c in enumerate(classes):
        if c.schedule is not None:
            rng = class_rngs[i]
            own = w.model_copy(update={"schedule": c.schedule})
            t = scheduled_arrivals(own, None, lambda k, rng=rng: _gaps(w, k, rng, 1.0), DEFAULT_REQUESTS)
            times.append(t)
            owner.append(np.full(len(t), i, dtype=np.int64))
    arrival, cls = np.concatenate(times), np.concatenate(owner)
    order = np.argsort(arrival, kind="stable")
    return arrival[order], cls[order]


def _generate_classes(
    w: Workload, trace, arrival: np.ndarray, cls: np.ndarray, arr_rng, p_rng, o_rng, c_rng
) -> Requests:
    classes = w.classes
    # turns per arrival; a conversation's later turns are requests too
    turns = np.ones(len(arrival), dtype=np.int64)
    for ci, c in enumerate(classes):
        if c.session is not None:
            mask = cls == ci
            turns[mask] = _lengths(c.session.turns, int(mask.sum()), c_rng, None)
    if w.num_requests:
        total = np.cumsum(turns)
        keep = int(np.searchsorted(total, w.num_requests)) + 1
        arrival, cls, turns = arrival[:keep], cls[:keep], turns[:keep].copy()
        turns[-1] -= max(int(total[keep - 1]) - w.num_requests, 0)
    n = int(turns.sum())
    # draw lengths per class, in order of use
    user = np.empty(n, dtype=np.int64)
    out = np.empty(n, dtype=np.int64)
    req_cls = np.repeat(cls, turns)
    for ci, c in enumerate(classes):
        idx = np.flatnonzero(req_cls == ci)
        pd, od = c.prompt_tokens or w.prompt_tokens, c.output_tokens or w.output_tokens
        user[idx] = _lengths(pd, len(idx), p_rng, trace.prompt_tokens if trace else None)
        out[idx] = _lengths(od, len(idx), o_rng, trace.output_tokens if trace else None)
    if not any(c.session for c in classes):
        return _single_turns(classes, arrival, cls, user, out)
    arr = np.full(n, np.nan)
    prompt = np.empty(n, dtype=np.int64)
    next_turn = np.full(n, -1, dtype=np.int64)
    think = np.zeros(n)
    segments: list = [None] * n
    shareable = np.zeros(n, dtype=np.int64)
    rid = 0
    for a, ci, t in zip(arrival.tolist(), cls.tolist(), turns.tolist()):
        c = classes[ci]
        sys_seg = ((SYSTEM_PROMPT_ID - ci, c.shared_prefix_tokens),) if c.shared_prefix_tokens else ()
        history: tuple = ()
        arr[rid] = a
        for k in range(t):
            u = int(user[rid])
            mine = ((2 * rid, u),)
            segs = history + mine + sys_seg if c.prefix_position == "end" else sys_seg + history + mine
            prompt[rid] = sum(x[1] for x in segs)
            shares_something = (c.prefix_position == "start" and sys_seg) or k > 0 or (c.session and t > 1)
            segments[rid] = segs if shares_something else None
            if c.session and t > 1:
                shareable[rid] = -1
            elif c.prefix_position == "start":
                shareable[rid] = c.shared_prefix_tokens
            if k < t - 1:
                next_turn[rid] = rid + 1
                think[rid] = arr_rng.exponential(c.session.think_time_s) if c.session.think_time_s else 0.0
            history = history + mine + ((output_segment(rid), int(out[rid])),)
            rid += 1
    return Requests(
        arr,
        prompt,
        out,
        class_id=req_cls.astype(np.int64),
        class_names=tuple(c.name for c in classes),
        segments=segments,
        next_turn=next_turn,
        think_s=think,
        shareable=shareable,
    )
