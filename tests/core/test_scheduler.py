"""The batching policy on its own, with no clock: budgets, admission, preemption, prefix reuse."""

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.kv_cache import BlockPool, blocks_for
from core.scheduler import Scheduler, SchedulerConfig, Sequence, SpecDecode


def drain(s: Scheduler, max_steps: int = 10_000) -> list:
    batches = []
    for _ in range(max_steps):
        b = s.schedule()
        if b is None:
            break
        batches.append(b)
        s.complete(b)
    return batches


def test_chunked_prefill_respects_budget_and_puts_decodes_first():
    s = Scheduler(BlockPool(10_000, 16), SchedulerConfig(8, 256, chunked_prefill=True))
    s.add(Sequence(0, 1000, 5))
    s.add(Sequence(1, 50, 300))
    batches = drain(s)
    assert all(b.shape.tokens <= 256 for b in batches)
    first = batches[0]
    assert first.shape.prefill_tokens == 256 and first.num_decodes == 0
    # once seq 1 decodes, every later step gives it a token before any prompt chunk
    assert any(b.num_decodes and b.prefills for b in batches)
    assert s.pool.free == s.pool.num_blocks and not s.running


def test_prefill_first_runs_whole_prompts_in_prefill_only_steps():
    s = Scheduler(BlockPool(10_000, 16), SchedulerConfig(8, 4096, chunked_prefill=False))
    for i in range(3):
        s.add(Sequence(i, 1000, 4))
    b = s.schedule()
    assert b.num_decodes == 0 and [c for _, c in b.prefills] == [1000, 1000, 1000]
    s.complete(b)
    s.add(Sequence(9, 2000, 2))
    b = s.schedule()  # a waiting prompt goes before the running decodes
    assert b.num_decodes == 0 and b.prefills[0][1] == 2000


def test_max_num_seqs_limits_admission():
    s = Scheduler(BlockPool(10_000, 16), SchedulerConfig(2, 8192))
    for i in range(5):
        s.add(Sequence(i, 10, 100))
    b = s.schedule()
    assert len(b.prefills) == 2 and len(s.waiting) == 3


def test_out_of_blocks_preempts_the_newest_and_recomputes():
    pool = BlockPool(12, 4)
    s = Scheduler(pool, SchedulerConfig(8, 64, watermark=0.0))
    s.add(Sequence(0, 8, 30))
    s.add(Sequence(1, 8, 30))
    preempted = []
    for _ in range(200):
        b = s.schedule()
        if b is None:
            break
        preempted += [v.rid for v in b.preempted]
        assert pool.used <= pool.num_blocks
        s.complete(b)
    assert preempted and preempted[0] == 1  # the most recently admitted goes first
    assert pool.free == pool.num_blocks and not s.running and not s.waiting


def test_prefix_caching_reuses_shared_blocks_and_evicts_lru():
    pool = BlockPool(100, 4, prefix_caching=True)
    keys = {
        0: np.array([0, 1, 2, 3, 4, 10]),
        1: np.array([0, 1, 2, 3, 4, 11]),
    }  # 5 shared blocks, then their own
    s = Scheduler(pool, SchedulerConfig(8, 64), block_keys=lambda rid, n: keys[rid][: n // 4])
    s.add(Sequence(0, 24, 2))
    drain(s)
    assert pool.free == 100 and len(pool.cached) == 6  # all full blocks stay cached after it finishes
    s.add(Sequence(1, 24, 2))
    b = s.schedule()
    # 5 shared blocks (20 tokens) are cached: only the last 4 tokens are computed
    assert b.prefills[0][1] == 4 and b.shape.prefill_context_tokens == 20
    s.complete(b)
    drain(s)
    pool.allocate(100 - 0)  # needs every block: evicts all cached blocks
    assert not pool.cached and pool.evictions > 0


def test_priority_policy_orders_the_queue_and_preempts_low_priority_first():
    prio = {0: 0, 1: 5, 2: 0, 3: 5}
    s = Scheduler(BlockPool(10_000, 16), SchedulerConfig(1, 8192), priority_of=prio)
    for rid in range(4):
        s.add(Sequence(rid, 10, 2))
    assert [q.rid for q in s.waiting] == [1, 3, 0, 2]
    pool = BlockPool(10, 4)
    s = Scheduler(pool, SchedulerConfig(8, 64, watermark=0.0), priority_of={0: 5, 1: 0, 2: 5})
    for rid in range(3):
        s.add(Sequence(rid, 4, 30))
    victims = []
    for _ in range(300):
        b = s.schedule()
        if b is None:
            break
        victims += [v.rid for v in b.preempted]
        s.complete(b)
    assert victims and victims[0] == 1  # the low-priority one goes first, though it is not the newest


def test_admission_control_refuses_and_expires():
    arrival = [0.0, 0.0, 0.0, 5.0]
    s = Scheduler(BlockPool(100, 16), SchedulerConfig(1, 64, max_waiting=2, timeout_s=1.0), arrival_s=arrival)
    assert s.add(Sequence(0, 10, 5)) and s.add(Sequence(1, 10, 5))
    assert not s.add(Sequence(2, 10, 5))
    assert s.dropped == [(2, "queue_full")]
    gone = s.expire(now=2.0)
    assert [g.rid for g in gone] == [0, 1] and not s.waiting
    assert s.dropped[-2:] == [(0, "timed_out"), (1, "timed_out")]


def test_whole_fresh_prompts_are_counted_for_the_fresh_kernel():
    """Every step's shape equals BatchShape.of over its chunks: a prompt's first chunk, long enough, is
    fresh; later chunks (after its own prefix) and short prompts are not."""
    from core.cost_model import BatchShape

    fresh = (2049, 128)
    s = Scheduler(BlockPool(100_000, 16), SchedulerConfig(8, 6000, fresh=fresh))
    for i, (p, o) in enumerate([(5000, 3), (9000, 2), (2049, 2), (2048, 2), (300, 4)]):
        s.add(Sequence(i, p, o))
    seen = 0
    for _ in range(100):
        b = s.schedule()
        if b is None:
            break
        chunks = [(c, q.computed) for q, c in b.prefills]
        want = BatchShape.of(chunks, fresh=fresh)
        for f in ("fresh_seqs", "fresh_tokens", "fresh_pairs", "fresh_padded_pairs", "prefill_pairs"):
            assert getattr(b.shape, f) == getattr(want, f), f
        seen += b.shape.fresh_seqs
        s.complete(b)
    # the 5000-token prompt and the 2049-token one; the 9000's first chunk (1000, budget) is short, and the
    # 2048-token one is split by the budget
    assert seen == 2


# ---------------------------------------------------------------- the scheduler's inline copies and their twins
# The hot path writes a few helpers out in place (block counts, the prefix lookup, causal pairs); these tests
# drive random workloads and check each copy, at every call or step, against the plain helper.


def random_scheduler(data, caching: bool, spec: bool = False, cls=Scheduler) -> Scheduler:
    """A scheduler over a small pool (preemptions happen) with random requests already queued."""
    from core.requests import PrefixKeys, Requests

    B = data.draw(st.sampled_from([1, 4, 16]), "block_size")
    n = data.draw(st.integers(1, 12), "requests")
    prompts = data.draw(st.lists(st.integers(1, 300), min_size=n, max_size=n), "prompts")
    outputs = data.draw(st.lists(st.integers(1, 60), min_size=n, max_size=n), "outputs")
    # room for any one request (so none waits forever), often not for all of them at once (preemptions)
    pool = BlockPool(blocks_for(500, B) + 20 + data.draw(st.integers(0, 600 // B), "more blocks"), B, caching)
    keys = None
    if (
        caching
    ):  # two system prompts of 64 tokens some requests start with (2: nothing after it), then their own
        sys_of = data.draw(
            st.lists(st.sampled_from([None, 0, 1, 2]), min_size=n, max_size=n), "system prompts"
        )
        own = [((100 + i, p),) if s != 2 else () for i, (s, p) in enumerate(zip(sys_of, prompts))]
        segs = [((s % 2, 64), *o) if s is not None else o for s, o in zip(sys_of, own)]
        prompts = [sum(t for _, t in g) for g in segs]
        keys = PrefixKeys(Requests(np.zeros(n), np.array(prompts), np.array(outputs), segments=segs), B)
    window = data.draw(st.sampled_from([0, 32]), "sliding window")
    chunked, budget = data.draw(st.booleans(), "chunked"), data.draw(st.sampled_from([16, 64, 512]), "budget")
    s = cls(
        pool,
        SchedulerConfig(
            max_num_seqs=data.draw(st.integers(1, 8), "max_num_seqs"),
            max_num_batched_tokens=budget if chunked else 512,  # (whole prompts fit unchunked, or never run)
            chunked_prefill=chunked,
            sliding_window=window,
            sliding_ratio=0.5 if window else 0.0,
            spec=SpecDecode(3, 8, [0.7] * n, np.random.default_rng(0)) if spec else None,
            fresh=(100, 16),
        ),
        block_keys=keys,
    )
    for i, (p, o) in enumerate(zip(prompts, outputs)):
        s.add(Sequence(i, p, o))
    return s


def steps(s: Scheduler, data, check=lambda b: None, max_steps: int = 3000):
    """Run to the end, a step at a time or (as the replica does) in decode-only runs, calling `check` after each."""
    rng = random.Random(data.draw(st.integers(0, 2**16), "seed of the run choices"))
    for _ in range(max_steps):
        run = s.decode_run(rng.randint(1, 40)) if rng.random() < 0.5 else None
        if run is not None:
            k, blocks = run
            s.advance_decodes(k, s.blocks_over(k) if blocks < 0 else blocks)
            check(None)
            continue
        b = s.schedule()
        if b is None:
            break
        check(b)
        s.complete(b)
        check(None)
    assert not s.has_work()


def plain_admissible(s: Scheduler, budget: int, look_again: bool) -> bool:
    """Scheduler._admissible written with the helpers it inlines: _prefix_hits and pool.blocks_for."""
    if not s.waiting or len(s.running) >= s.max_seqs or budget <= 0:
        return False
    head, pool = s.waiting[0], s.pool
    hits, take = 0, 0
    if s.block_keys:
        stale = head.hits is None or (look_again and head.hits_version != pool.version)
        hits, take = s._prefix_hits(head) if stale else head.hits
    todo = head.prompt - hits * s.B
    if todo > budget and not s.chunked:
        return False
    return pool.can_allocate(pool.blocks_for(min(todo, budget)) + take + head.window_blocks, s.watermark)


@settings(max_examples=120, deadline=None)
@given(st.data(), st.booleans())
def test_admission_check_equals_prefix_hits_and_blocks_for(data, caching):
    """Scheduler._admissible's inline prefix lookup and block count equal _prefix_hits and blocks_for."""
    calls = []

    class Checked(Scheduler):
        def _admissible(self, budget: int, look_again: bool = False) -> bool:
            want = plain_admissible(self, budget, look_again)
            got = Scheduler._admissible(self, budget, look_again)
            assert got == want
            if self.block_keys and self.waiting and self.waiting[0].hits_version == self.pool.version:
                assert self.waiting[0].hits == self._prefix_hits(self.waiting[0])
            calls.append(got)
            return got

    steps(random_scheduler(data, caching, cls=Checked), data)
    assert calls


@settings(max_examples=120, deadline=None)
@given(st.data(), st.booleans())
def test_blocks_held_equal_blocks_for_their_tokens(data, spec):
    """The block counts written out in the scheduler (a prompt's chunks, a decode's growth and release,
    decode runs, sliding-window blocks, speculative rounds) add up, after every step, to blocks_for of each
    running sequence's tokens: what the plain helper says it holds."""
    s = random_scheduler(data, caching=False, spec=spec)
    B = s.B

    def check(b) -> None:
        if b is not None:  # (a step scheduled, not yet complete: its chunks hold blocks ahead)
            return
        held = 0
        for q in s.running:
            tokens = q.c + s.dstep - 1 if q.decoding else q.computed  # KV written so far
            want = blocks_for(int(min(q.orig_prompt + q.output, s.window) * s.sliding_ratio), B)
            assert q.window_blocks == want
            held += blocks_for(tokens, B) + q.window_blocks
        assert s.pool.used == held

    steps(s, data, check)
    assert s.pool.used == 0


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_step_shape_equals_batch_shape_of_its_chunks(data):
    """Scheduler._shape's inline causal pairs (chunk_pairs) and its other counts equal BatchShape.of over
    the step's chunks."""
    from core.cost_model import BatchShape

    s = random_scheduler(data, caching=data.draw(st.booleans(), "caching"))

    def check(b) -> None:
        if b is None:
            return
        want = BatchShape.of([(c, q.computed) for q, c in b.prefills], window=s.window, fresh=(100, 16))
        for f in ("prefill_tokens", "prefill_seqs", "prefill_pairs", "sliding_prefill_pairs",
                  "prefill_context_tokens", "fresh_seqs", "fresh_tokens", "fresh_pairs", "fresh_padded_pairs"):  # fmt: skip
            assert getattr(b.shape, f) == getattr(want, f), f
        assert (b.shape.decode_seqs, b.shape.decode_context_tokens) == (b.num_decodes, b.decode_context)

    steps(s, data, check)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_a_speculative_rounds_verification_is_k_plus_one_decode_rows_a_sequence(data):
    """A round's shape: its prompt chunks as any step's, and each decoding sequence's verification as k + 1 decode
    rows, row j over the sequence's context (with its new token) and the j drafted tokens before it, as
    engine.speculative.verify_rows lays them out for the decode kernel."""
    from core.cost_model import BatchShape

    s = random_scheduler(data, caching=False, spec=True)

    def check(b) -> None:
        if b is None or not b.spec_k:
            return
        q = b.spec_k + 1
        want = BatchShape.of([(c, r.computed) for r, c in b.prefills], window=s.window, fresh=(100, 16))
        assert (b.shape.prefill_tokens, b.shape.prefill_seqs) == (want.prefill_tokens, want.prefill_seqs)
        assert (b.shape.prefill_pairs, b.shape.prefill_context_tokens) == (
            want.prefill_pairs,
            want.prefill_context_tokens,
        )
        assert b.shape.decode_seqs == q * b.num_decodes
        # sum over the rows of (context + j): q contexts a sequence, plus 0 + 1 + ... + k drafted tokens
        assert b.shape.decode_context_tokens == q * b.decode_context + b.num_decodes * q * (q - 1) // 2
        assert b.shape.tokens == want.prefill_tokens + q * b.num_decodes

    steps(s, data, check)


def test_static_batch_pads_to_the_longest_and_drops_the_newest_until_it_fits():
    pool = BlockPool(20, 16)
    s = Scheduler(pool, SchedulerConfig(4, 8192))
    for rid, (p, o) in enumerate([(40, 8), (100, 20), (10, 5), (30, 3), (20, 2)]):
        s.add(Sequence(rid, p, o))
    b = s.static_batch()  # 4 taken; padded to 100 + 20 = 8 blocks each: only 2 fit in 20
    assert [q.rid for q in b.seqs] == [0, 1] and (b.prompt_tokens, b.output_tokens) == (100, 20)
    assert b.blocks_per_seq == 8 and pool.free == 4
    assert [q.rid for q in s.waiting] == [2, 3, 4]  # the dropped ones first again, in order
    s.static_done(b)
    assert pool.free == 20
    big = Scheduler(BlockPool(70, 16), SchedulerConfig(4, 8192))
    big.add(Sequence(0, 1000, 10))
    big.add(Sequence(1, 10, 10))
    assert [q.rid for q in big.static_batch().seqs] == [0]  # padded to 1010 tokens, two do not fit
    assert Scheduler(pool, SchedulerConfig(4, 8192)).static_batch() is None


def test_decoding_lists_the_batch_decodes_with_their_context():
    s = Scheduler(BlockPool(100, 16), SchedulerConfig(8, 64))
    s.add(Sequence(3, 10, 4))
    s.add(Sequence(7, 20, 4))
    s.complete(s.schedule())  # both prompts: first tokens
    b = s.schedule()
    rids, ctx = s.decoding()
    assert b.num_decodes == 2 and rids.tolist() == [3, 7] and ctx.tolist() == [11, 21]
    assert ctx.sum() == b.decode_context  # the batch's total, listed
    s.complete(b)
    s.schedule()
    assert s.decoding()[1].tolist() == [12, 22]


def test_a_start_shares_its_hits_before_window_blocks_can_evict_them():
    """With sliding-window layers and prefix caching, a sequence's window blocks are taken after it shares
    its cached prefix: taken first, they could evict those very blocks (a KeyError in the pool)."""
    from core.requests import PrefixKeys, Requests

    prompts, outputs = [1, 1, 1, 9, 96, 300, 1, 1, 1], [1, 1, 3, 9, 10, 3, 1, 1, 1]
    segs = [((100 + i, p),) for i, p in enumerate(prompts)]
    segs[5] = ((0, 64), (105, 300))  # one request behind a 64-token system prompt
    prompts[5] += 64
    keys = PrefixKeys(Requests(np.zeros(9), np.array(prompts), np.array(outputs), segments=segs), 1)
    pool = BlockPool(520, 1, prefix_caching=True)
    s = Scheduler(
        pool,
        SchedulerConfig(4, 512, chunked_prefill=False, sliding_window=32, sliding_ratio=0.5),
        block_keys=keys,
    )
    for i, (p, o) in enumerate(zip(prompts, outputs)):
        s.add(Sequence(i, p, o))
    drain(s)
    assert not s.has_work() and pool.free == pool.num_blocks


def test_sliding_terms_are_the_windowed_layers_share_of_a_tokens_kv():
    import pytest

    from core.model_spec import load_model
    from core.scheduler import sliding_terms

    gemma, llama = load_model("gemma-3-12b"), load_model("llama-3.1-8b")
    window, ratio = sliding_terms(gemma)  # 40 of 48 layers keep 1,024 tokens
    assert window == gemma.sliding_window > 0
    assert ratio == pytest.approx(gemma.sliding_kv_bytes_per_token("bf16") / gemma.kv_bytes_per_token("bf16"))
    assert ratio == pytest.approx(gemma.sliding_layers / gemma.full_attention_layers)
    assert sliding_terms(llama)[1] == 0.0
