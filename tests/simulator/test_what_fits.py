"""What fits: the memory plan over GPUs × weight formats × GPUs per replica, and the smallest change."""

from simulator import api
from simulator.cli import main
from simulator.fit import what_fits


def test_a_row_is_the_simulators_own_memory_plan(tmp_path):
    (row,) = what_fits("llama-3.1-8b", ["h100-sxm"], ("bf16",), (1,), context_tokens=2000)
    f = api.forecast(
        {
            "model": "llama-3.1-8b",
            "hardware": {"gpu": "h100-sxm"},
            "workload": {"arrival": {"process": "poisson", "rate_per_s": 1}, "num_requests": 5},
        }  # fmt: skip
    )
    assert row.fits and row.kv_tokens == f.summary["memory"]["kv_tokens"]
    assert row.max_batch == row.kv_tokens // 2000


def test_a_setup_that_does_not_fit_names_the_smallest_change_that_does():
    rows = what_fits("llama-3.1-70b", ["h100-sxm"], ("bf16", "fp8"), (1, 2))
    by = {(r.weight_dtype, r.gpus): r for r in rows}
    assert not by["bf16", 1].fits
    assert by["bf16", 1].note == "fits with 2 GPUs per replica or fp8 weights"
    assert by["bf16", 2].fits and by["fp8", 1].fits  # (each named change does fit)


def test_two_changes_or_none_are_said_too():
    rows = what_fits("llama-3.1-70b", ["t4"], ("bf16", "int4"), (1, 4))
    by = {(r.weight_dtype, r.gpus): r for r in rows}
    assert by["bf16", 1].note == "fits with 4 GPUs per replica and int4 weights"
    (alone,) = what_fits("llama-3.1-70b", ["t4"], ("bf16",), (1,))
    assert "nothing tried on this GPU fits" in alone.note


def test_fit_verb_prints_the_table_and_refuses_an_unknown_gpu_in_one_line(capsys):
    assert main(["fit", "qwen2.5-0.5b", "--gpu", "t4", "--gpus", "1", "--gpus", "2", "--dtype", "bf16"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:4] == ["GPU", "weights", "GPUs", "fits"]
    assert [line.split()[:4] for line in out[2:]] == [["t4", "bf16", "1", "yes"], ["t4", "bf16", "2", "yes"]]
    assert main(["fit", "qwen2.5-0.5b", "--gpu", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err  # one line, naming it


def test_fit_offers_no_format_the_gpu_cannot_run_and_marks_fallbacks():
    from simulator.fit import fit_cells

    rows = what_fits("llama-3.1-8b", ["t4", "a100-40gb", "h100-sxm"], ("bf16", "fp8"), (1, 2))
    t4_fp8 = [r for r in rows if (r.gpu, r.weight_dtype) == ("t4", "fp8")]
    assert len(t4_fp8) == 1 and t4_fp8[0].refused and not t4_fp8[0].fits  # one row, no GPU count offered
    cells = fit_cells(t4_fp8[0])
    assert cells[2:4] == ["—", "no"] and cells[-1].startswith("refused: Turing") and "fp8 units" in cells[-1]
    by = {(r.gpu, r.weight_dtype, r.gpus): r for r in rows}
    assert by["a100-40gb", "fp8", 1].fits and by["a100-40gb", "fp8", 1].format_note == "fallback: weight-only"
    assert by["t4", "bf16", 2].format_note == "fallback: runs as fp16"
    assert by["h100-sxm", "fp8", 1].format_note == "" and by["h100-sxm", "bf16", 1].format_note == ""
    assert all(not r.refused for r in rows if r.gpu != "t4" or r.weight_dtype != "fp8")
    # a change suggested for a setup that does not fit is never the refused format
    assert "fp8" not in by["t4", "bf16", 1].note
