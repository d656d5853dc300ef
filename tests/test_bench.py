"""The benchmark command in smoke mode, on a tiny Orthrus checkpoint built here: JSON fields, plot, identical output.

Timings are not checked (they mean nothing on a shared CPU), only that every number is there.
"""

from __future__ import annotations

import json

import pytest

from conftest import TEXT, save_checkpoint
from orthrus_min.bench import main
from orthrus_min.bench_decode import Prompt, long_prompt, read_prompts
from orthrus_min.model import init_diffusion_view, load_model, save_model
from orthrus_min.tokenizer import Tokenizer

MASK_ID = 3  # "<|mask|>" in conftest's tokenizer
METRICS = {"new_tokens", "seconds", "tokens_per_s", "ttft_s", "decode_tokens_per_s", "num_forwards", "tokens_per_forward",
           "peak_memory_mb"}
ACCEPTANCE = {"acceptance_mean", "acceptance_histogram", "iterations"}


@pytest.fixture(scope="module")
def orthrus_checkpoint(tmp_path_factory):
    """A tiny random Qwen3 (Transformers-saved, with tokenizer) turned into an Orthrus checkpoint with K = 8."""
    folder = tmp_path_factory.mktemp("tiny_orthrus")
    save_checkpoint(folder, eos_token_id=2)
    model = init_diffusion_view(load_model(folder), block_size=8, mask_token_id=MASK_ID)
    save_model(model, folder)
    return folder


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    lines = TEXT.splitlines(keepends=True)
    records = [{"id": "fib", "prompt": "".join(lines[:3])},
               {"prompt": "Write a stack class.", "chat": True, "enable_thinking": False},
               {"id": "stack", "prompt": "".join(lines[6:9])},
               {"id": "too-long", "prompt": "x = 1\n" * 1200}]  # more than the context of 2048: skipped
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    return path


def test_all_smoke(orthrus_checkpoint, prompts_file, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["all", "--model", str(orthrus_checkpoint), "--prompts", str(prompts_file), "--smoke", "--max-prompts", "2",
               "--device", "cpu", "--out", str(out)])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| method | tokens/s |" in stdout and "## By block size" in stdout and "## One forward" in stdout
    r = json.loads((out / "bench_all.json").read_text())
    png = out / "bench_all.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and r["files"] == {"json": str(out / "bench_all.json"), "png": str(png)}

    assert r["command"] == "all" and r["schema_version"] == 1 and r["machine"] and r["machine_info"]["torch"]
    s = r["settings"]
    assert s["num_prompts"] == 2 and s["new_tokens"] == 8 and s["repeats"] == 1 and s["block_size"] == 8
    assert s["device"] == "cpu" and "monotone" in s["memory_kind"] and s["params_diffusion"] > 0
    assert [x["id"] for x in s["skipped_prompts"]] == ["too-long"]

    t = r["table"]
    assert t["methods"] == ["transformers", "ar", "orthrus_greedy", "ar_sampled", "orthrus_sampled"]
    assert t["identical_output"] == {"orthrus_greedy_vs_ar": True, "ar_vs_transformers": True}
    assert set(t["speedup"]) == {"orthrus_greedy_vs_ar", "orthrus_sampled_vs_ar_sampled", "ar_vs_transformers",
                                 "orthrus_greedy_vs_transformers"}
    assert [p["id"] for p in t["prompts"]] == ["fib", "prompts.jsonl:2"]
    for p in t["prompts"]:
        assert p["prompt_tokens"] > 0 and all(p["identical"].values())
        assert p["first_mismatch"] == {"orthrus_greedy_vs_ar": None, "ar_vs_transformers": None}
        for name, m in p["methods"].items():
            orthrus = name.startswith("orthrus")
            assert set(m) == METRICS | (ACCEPTANCE if orthrus else set()), name
            assert m["new_tokens"] == 8 and m["tokens_per_s"] > 0 and m["peak_memory_mb"] > 0
            if orthrus:
                assert len(m["acceptance_histogram"]) == 8 and sum(m["acceptance_histogram"]) == m["iterations"]
                assert 1 <= m["acceptance_mean"] <= 8 and m["num_forwards"] == 2 * m["iterations"]
    assert t["overall"]["ar"]["tokens_per_forward"] == 1.0 and t["overall"]["transformers"]["tokens_per_forward"] is None
    assert sum((i + 1) * c for i, c in enumerate(t["overall"]["orthrus_greedy"]["acceptance_histogram"])) == 2 * 7  # tokens after the first

    assert [q["block_size"] for q in r["block_size_sweep"]] == [4, 8]
    for q in r["block_size_sweep"]:
        assert q["identical_output"] is True and len(q["acceptance_histogram"]) == q["block_size"] and q["speedup"] > 0
    assert [q["context_tokens"] for q in r["context_sweep"]] == [32, 64]
    for q in r["context_sweep"]:
        assert q["identical_output"] is True and q["speedup"] > 0 and q["ar_ttft_s"] > 0
        assert q["prompt_tokens"] == [q["context_tokens"]]  # a raw prompt is cut to exactly that length

    f = r["forward"]
    assert {(row["view"], row["tokens"]) for row in f["latency"]} == {("ar", 1), ("ar", 8), ("diffusion", 8)}
    assert all(x["ratio"] > 0 and x["break_even_acceptance"] > 0 for x in f["summary"])
    assert set(f["roofline"]["decode_tokens_per_s"]) == {"transformers", "ar"} and f["roofline"]["roofline_tokens_per_s"] > 0


def test_orthrus_without_transformers_and_json_path(orthrus_checkpoint, prompts_file, tmp_path, capsys):
    path = tmp_path / "r.json"
    rc = main(["orthrus", "--model", str(orthrus_checkpoint), "--prompts", str(prompts_file), "--smoke", "--block-size", "4",
               "--block-sizes", "2,4,16", "--context-lengths", "40", "--device", "cpu", "--json", str(path), "--out", str(tmp_path)])
    assert rc == 0
    r = json.loads(path.read_text())
    assert r["table"]["methods"] == ["ar", "orthrus_greedy", "ar_sampled", "orthrus_sampled"] and "forward" not in r
    assert r["table"]["identical_output"] == {"orthrus_greedy_vs_ar": True}
    assert r["settings"]["block_size"] == 4 and [q["block_size"] for q in r["block_size_sweep"]] == [2, 4]  # 16 > the checkpoint's 8
    assert [q["context_tokens"] for q in r["context_sweep"]] == [40] and (tmp_path / "bench_orthrus.png").exists()


def test_forward_smoke(orthrus_checkpoint, tmp_path, capsys):
    path = tmp_path / "forward.json"
    assert main(["forward", "--model", str(orthrus_checkpoint), "--smoke", "--device", "cpu", "--lengths", "0,24",
                 "--tokens", "1,4,8", "--json", str(path)]) == 0
    assert "T=8 / T=1" in capsys.readouterr().out
    r = json.loads(path.read_text())
    assert r["command"] == "forward" and r["settings"]["lengths"] == [0, 24] and r["settings"]["tokens"] == [1, 4, 8]
    assert len(r["latency"]) == 2 * (3 + 2) and all(row["ms"] > 0 for row in r["latency"])  # AR: T=1,4,8; diffusion: T=4,8
    assert {(x["cache_len"], x["tokens"]) for x in r["summary"]} == {(0, 4), (0, 8), (24, 4), (24, 8)}
    roof = r["roofline"]
    assert roof["copy_bandwidth_gbs"] > 0 and roof["weight_bytes_per_token"] > 0 and roof["kv_bytes_per_token"] > 0
    assert set(roof["decode_tokens_per_s"]) == set(roof["fraction_of_roofline"]) == {"transformers", "ar"}


def test_ar_still_works(orthrus_checkpoint, tmp_path):
    path = tmp_path / "ar.json"
    assert main(["ar", "--model", str(orthrus_checkpoint), "--prompt-len", "5", "--new-tokens", "6", "--repeats", "1",
                 "--json", str(path)]) == 0
    r = json.loads(path.read_text())
    assert r["identical_output"] is True and r["ratio"] > 0


def test_long_prompt_ends_with_the_prompt_at_the_exact_length(orthrus_checkpoint):
    tok = Tokenizer(orthrus_checkpoint)
    lines = TEXT.splitlines(keepends=True)
    prompts = [Prompt(str(i), "".join(lines[i : i + 2])) for i in range(0, 12, 2)]
    ids, repeated = long_prompt(prompts, 1, 30, tok)
    assert len(ids) == 30 and not repeated and ids[-len(tok.encode(prompts[1].text)) + 1:] == tok.encode(prompts[1].text)[1:]
    ids, repeated = long_prompt(prompts, 1, 400, tok)  # more than all prompts together: the filler wraps around
    assert len(ids) == 400 and repeated


def test_prompt_file_format_errors_and_help(orthrus_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    with pytest.raises(Exception, match=r"bad.jsonl:2: expected an object with a non-empty string \"prompt\""):
        read_prompts(bad)
    bad.write_text('{"prompt": "ok"}\nnot json\n')
    assert main(["orthrus", "--model", str(orthrus_checkpoint), "--prompts", str(bad), "--smoke"]) == 2
    assert "bad.jsonl:2: not a JSON object" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["orthrus", "--help"])
    assert '"chat": true' in capsys.readouterr().out
