"""`python -m orthrus_min.bench gpu`: the whole GPU report runs end to end on the CPU (--smoke), so that the first GPU
run is not its first run; its checks hold; a failed check or a failing section shows in the report and the exit status."""

from __future__ import annotations

import json

import pytest

from orthrus_min.bench import gpu
from orthrus_min.bench.cli import main


def test_smoke_run_on_the_cpu_writes_every_section_and_its_checks_pass(tmp_path, capsys):
    assert main(["gpu", "--device", "cpu", "--smoke", "--out", str(tmp_path), "--threads", "1"]) == 0
    result = json.loads((tmp_path / "bench_gpu.json").read_text())
    report = (tmp_path / "bench_gpu.md").read_text()
    assert capsys.readouterr().out.startswith(report)

    sections = result["sections"]
    assert list(sections) == list(gpu.SECTIONS)
    assert {name: r["status"] for name, r in sections.items()} == {
        "tests": "skipped", "invariance": "ok", "decode": "ok", "roofline": "ok", "forward": "ok", "identical": "ok",
        "cost": "ok", "attn": "skipped"}  # no GPU: the GPU tests skip, and the kernel section needs CUDA
    assert sections["tests"]["skipped"] > 0 and sections["tests"]["failed"] == 0
    assert sections["attn"]["reason"] == "needs a CUDA GPU and triton"

    # every equality the report checks holds: batch-invariant logits, Orthrus == AR (per batch size, per K), batched rows
    assert set(result["checks"]) == {"logits_invariant_torch_bfloat16", "orthrus_equals_ar_b1", "orthrus_equals_ar_b2",
                                     "identical_torch_K4", "identical_torch_K32", "batched_rows_equal_alone_torch"}
    assert all(result["checks"].values()) and result["all_checks_pass"]
    invariance = {row["what"]: row for row in sections["invariance"]["rows"]}
    assert invariance["model logits, torch, batch invariance on"]["max_abs_diff"] == 0.0
    assert invariance["invariant attention (torch)"]["bit_identical"]
    assert invariance["Linear, batch-invariant (q_proj)"]["bit_identical"] and invariance["RMSNorm"]["bit_identical"]
    identical = [row for row in sections["identical"]["rows"] if row["batch_invariant"]]
    assert [(row["block_size"], row["identical"], row["prompts"]) for row in identical] == [(4, 2, 2), (32, 2, 2)]

    assert [p["batch_size"] for p in sections["decode"]["points"]] == [1, 2]
    assert all(p["ar"]["tokens_per_s"] > 0 and p["orthrus"]["tokens_per_s"] > 0 for p in sections["decode"]["points"])
    assert sections["roofline"]["roofline_tokens_per_s"] > 0 and set(sections["roofline"]["decode_tokens_per_s"]) == {"ar"}
    assert {(row["cache_len"], row["tokens"]) for row in sections["forward"]["latency"]} == {(16, 1), (16, 8), (64, 1), (64, 8)}
    assert [(row["dtype"], row["method"]) for row in sections["cost"]["rows"]] == [
        ("bfloat16", "ar"), ("bfloat16", "orthrus K=8"), ("float32", "ar"), ("float32", "orthrus K=8")]
    assert all(row["off_tokens_per_s"] > 0 and row["on_tokens_per_s"] > 0 for row in sections["cost"]["rows"])
    for title in ("## Checks", "## GPU-only tests", "## Batch invariance", "## Decoding the shipped model", "## AR decode against",
                  "## One forward", "## bf16: Orthrus output identical", "## What batch invariance costs", "## The attention kernel"):
        assert title in report, title
    assert "FAIL" not in report


def test_a_failed_check_and_a_failing_section_exit_1_and_show_in_the_report(tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("out of memory\nsecond line")

    monkeypatch.setitem(gpu.RUNNERS, "tests", (lambda ctx: {"status": "ok", "checks": {"gpu_tests_pass": False}},
                                                lambda r: [], "GPU-only tests"))
    monkeypatch.setitem(gpu.RUNNERS, "attn", (broken, gpu.md_attn, "The attention kernel"))
    assert main(["gpu", "--device", "cpu", "--sections", "tests,attn", "--out", str(tmp_path)]) == 1
    result = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert result["checks"] == {"gpu_tests_pass": False} and not result["all_checks_pass"]
    assert result["sections"]["attn"] == {"status": "error", "error": "RuntimeError: out of memory second line",
                                          "seconds": result["sections"]["attn"]["seconds"]}
    report = (tmp_path / "bench_gpu.md").read_text()
    assert "- FAIL gpu_tests_pass" in report and "Sections that failed to run: attn" in report


@pytest.mark.parametrize("argv, message", [
    (["--sections", "decode,nope"], "argument --sections: unknown section nope; choose from tests, invariance, decode"),
    (["--compile-mode", "fast"], "argument --compile-mode: invalid choice: 'fast'"),
    (["--block-size", "0"], "argument --block-size: expected an integer >= 1, got '0'"),
])
def test_bad_flags_are_one_line_errors(argv, message, capsys, tmp_path):
    assert main(["gpu", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
