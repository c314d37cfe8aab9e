import pytest
import torch

from core.cost_model import chunk_pairs
from engine.model import build_model
from engine.steps import StepRunner, capture_sizes, extrapolate_layers


@pytest.fixture
def runner(tiny_spec):
    model = build_model(tiny_spec, dtype="fp32", device="cpu")
    return StepRunner(model, max_batch=4, max_context=64, device="cpu")


def test_steps_time_and_describe(runner):
    s, shape = runner.prefill([10, 6], return_shape=True, warmup=0, repeat=2)
    assert s > 0 and shape.prefill_tokens == 16 and shape.prefill_seqs == 2
    assert shape.prefill_pairs == chunk_pairs(0, 10) + chunk_pairs(0, 6)
    s, shape = runner.decode([5, 17, 1], return_shape=True, warmup=0, repeat=2)
    assert (
        s > 0 and shape.decode_seqs == 3 and shape.decode_context_tokens == 23 and shape.prefill_tokens == 0
    )
    s, shape = runner.mixed([(8, 4)], [3, 9], return_shape=True, warmup=0, repeat=2)
    assert shape.prefill_tokens == 8 and shape.prefill_context_tokens == 4
    assert (
        shape.prefill_pairs == chunk_pairs(4, 8) and shape.decode_context_tokens == 12 and shape.tokens == 10
    )


def test_step_limits_are_clear(runner):
    with pytest.raises(ValueError, match="max_context"):
        runner.decode([65])
    with pytest.raises(ValueError, match="KV slots"):
        runner.prefill([60] * 14)


def test_logits_of_a_step_match_the_model(runner, tiny_spec):
    toks = torch.randint(1, tiny_spec.vocab_size, (7,))
    out = runner.logits([7], [0], toks)
    assert out.shape == (1, tiny_spec.vocab_size)
    again = runner.logits([7], [0], toks)
    assert torch.allclose(out, again)


def test_capture_sizes_and_extrapolation():
    assert capture_sizes(32) == [1, 2, 4, 8, 16, 24, 32]
    assert capture_sizes(20)[-1] == 20
    assert extrapolate_layers(3.0, 2, 5.0, 4, 32) == pytest.approx(33.0)


def test_runner_decode_continues_its_prefill(runner, tiny_spec):
    lens, starts = [5, 12, 3], [0, 16, 32]
    toks = [torch.randint(1, tiny_spec.vocab_size, (n,)) for n in lens]
    full = runner.logits(lens, [0, 0, 0], torch.cat(toks), starts)
    pre = [n - 1 for n in lens]
    runner.logits(pre, [0, 0, 0], torch.cat([t[:-1] for t in toks]), starts)
    inc = runner.logits([1, 1, 1], pre, torch.stack([t[-1] for t in toks]), starts)
    assert torch.allclose(full, inc, rtol=1e-4, atol=1e-4)


def test_mixed_step_equals_its_prefill_and_decodes(runner, tiny_spec):
    lens, starts = [5, 12], [0, 16]
    toks = [torch.randint(1, tiny_spec.vocab_size, (n,)) for n in lens]
    full = runner.logits(lens, [0, 0], torch.cat(toks), starts)
    pre = [n - 1 for n in lens]
    runner.logits(pre, [0, 0], torch.cat([t[:-1] for t in toks]), starts)
    a = torch.randint(1, tiny_spec.vocab_size, (9,))
    mix = runner.logits(
        [9, 1, 1], [0] + pre, torch.cat([a, torch.stack([t[-1] for t in toks])]), [32] + starts
    )
    alone = runner.logits([9], [0], a, [32])
    assert torch.allclose(mix[1:], full, rtol=1e-4, atol=1e-4)
    assert torch.allclose(mix[:1], alone, rtol=1e-4, atol=1e-4)


def test_timed_steps_run_through_the_serving_executor(tiny_spec, monkeypatch):
    """Calibration's steps are the serving loop's: prefill, decode and mixed steps call Executor.step (the
    function serve() calls per batch) with each sequence in its own region; serving=False keeps the old path."""
    from engine.serving import Executor

    model = build_model(tiny_spec, dtype="fp32", device="cpu")
    r = StepRunner(model, max_batch=4, max_context=64, device="cpu")
    assert isinstance(r.executor, Executor) and r.executor.scratch == r.kv_tokens
    calls = []
    real = Executor.step

    def spy(self, prefills, decodes):
        calls.append(([(s, p, c, len(t)) for s, p, c, t, _ in prefills], None if decodes is None else
                      [x.tolist() for x in decodes[:2]]))  # fmt: skip
        return real(self, prefills, decodes)

    monkeypatch.setattr(Executor, "step", spy)
    assert r.mixed([(8, 4)], [3, 9], warmup=1, repeat=2) > 0
    assert len(calls) == 3  # one warm-up, two timed
    # the chunk's region [0, 12), then the decodes' regions [12, 15) and [15, 24), contexts with the new token
    assert calls[0] == ([(0, 4, 8, 8)], [[12, 15], [3, 9]])
    assert r.decode([5, 17], warmup=0, repeat=1) > 0 and calls[-1] == ([], [[0, 5], [5, 17]])
    assert r.prefill([10, 6], warmup=0, repeat=1) > 0 and calls[-1] == ([(0, 0, 10, 10), (10, 0, 6, 6)], None)
    old = StepRunner(build_model(tiny_spec, dtype="fp32", device="cpu"), 4, 64, device="cpu", serving=False)
    n = len(calls)
    assert old.executor is None and old.decode([5, 17], warmup=0, repeat=1) > 0 and len(calls) == n
