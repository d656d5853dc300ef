"""`python -m orthrus_min.bench report`: the README's results region is what the committed benchmark JSON renders.

The first tests read the real README (and the model card, once it has a results region) against
docs/results/bench_all.json: a number changed by hand in either, or a JSON re-measured without
re-rendering, fails them. The rest render a small hand-made JSON and assert cells computed by hand.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from orthrus_min.bench.cli import main
from orthrus_min.bench.report import BEGIN, END, begin_line, render

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "docs/results/bench_all.json"
CARD = "orthrus_min/assets/orthrus-stdlib-tiny/README.md"


# --------------------------------------------------------------------------- the committed files


def test_readme_results_region_is_what_the_committed_json_renders(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    rc = main(["report", "--json", RESULTS, "--readme", "README.md", "--check"])
    out, err = capsys.readouterr()
    assert rc == 0, err  # on failure: the file, the line and the two versions of it
    assert out == f"README.md: as {RESULTS} renders\n"


def test_readme_results_region_names_the_json_and_the_command_that_made_it():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert begin_line(RESULTS) in text.splitlines() and END in text.splitlines()
    region = text.split(begin_line(RESULTS))[1].split(END)[0]
    argv = json.loads((ROOT / RESULTS).read_text())["argv"]
    assert "python -m orthrus_min.bench " + " ".join(argv) in region  # the command line, recorded by bench all itself


def test_model_card_results_region_is_what_the_committed_json_renders(monkeypatch, capsys):
    card = (ROOT / CARD).read_text(encoding="utf-8")
    assert sum(1 for line in card.splitlines() if BEGIN.match(line)) == 1  # the card has its one results region
    monkeypatch.chdir(ROOT)
    rc = main(["report", "--json", RESULTS, "--card", CARD, "--check"])
    assert rc == 0, capsys.readouterr().err


# --------------------------------------------------------------------------- a hand-made JSON


def result() -> dict:
    """A `bench all --compile` result with round numbers, every section present."""
    def metrics(rate, tau=None, tpf=1.0):
        return {"tokens_per_s": rate, "acceptance_mean": tau, "tokens_per_forward": tpf}

    prompts = [{"id": "a.py:1", "prompt_tokens": 100, "methods": {"orthrus_greedy": {"acceptance_mean": 3.5}},
                "identical": {"orthrus_greedy_vs_ar": True, "ar_vs_transformers": True, "orthrus_compiled_vs_ar": True,
                              "ar_compiled_vs_ar": True}},
               {"id": "b.py:2", "prompt_tokens": 120, "methods": {"orthrus_greedy": {"acceptance_mean": 4.5}},
                "identical": {"orthrus_greedy_vs_ar": True, "ar_vs_transformers": False, "orthrus_compiled_vs_ar": True,
                              "ar_compiled_vs_ar": True}}]
    methods = ["transformers", "ar", "orthrus_greedy", "ar_compiled", "orthrus_compiled", "ar_sampled", "orthrus_sampled"]
    overall = {"transformers": metrics(100.0, tpf=None), "ar": metrics(120.0), "orthrus_greedy": metrics(150.0, 4.0, 2.0),
               "ar_compiled": metrics(300.0), "orthrus_compiled": metrics(360.0, 4.0, 2.0), "ar_sampled": metrics(110.0),
               "orthrus_sampled": metrics(99.0, 3.0, 1.5)}
    sweep_point = {"acceptance_mean": 4.0, "tokens_per_forward": 2.0, "orthrus_tokens_per_s": 150.0, "ar_tokens_per_s": 125.0,
                   "identical_output": True}
    return {
        "command": "all", "argv": ["all", "--threads", "1", "--compile"], "schema_version": 1,
        "machine_info": {"device": "cpu", "cpu": "x86_64", "cpu_cores": 2, "cpu_threads": 1, "platform": "Linux-x",
                         "python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.25.0", "triton": "3.9.0"},
        "settings": {"model": "/somewhere/orthrus_min/assets/orthrus-stdlib-tiny", "device": "cpu", "dtype": "float32",
                     "attn": "torch", "compile_mode": "max-autotune", "smoke": False, "prompts_file": "/x/heldout_prompts.jsonl",
                     "num_prompts": 2, "skipped_prompts": [], "params_ar": 5_771_264, "params_diffusion": 1_180_416,
                     "new_tokens": 128, "repeats": 3, "warmup": 1, "block_size": 8, "block_room": 8, "temperature": 0.7,
                     "seed": 0, "stop_at_eos": False, "sweep_prompts": None, "context_prompts": 4},
        "table": {"methods": methods, "prompts": prompts, "overall": overall},
        "block_size_sweep": [{"block_size": 8, **sweep_point,
                              "compiled": {"orthrus_tokens_per_s": 375.0, "ar_compiled_tokens_per_s": 250.0,
                                           "identical_output": True}}],
        "context_sweep": [{"context_tokens": 1024, "prompt_tokens": [1000, 1050], "filler_repeated": False, **sweep_point}],
        "batch_size_sweep": [{"batch_size": 4, "repeated_prompts": True,
                              "ar": {"tokens_per_s": 400.0, "acceptance_mean": None},
                              "orthrus": {"tokens_per_s": 300.0, "acceptance_mean": 3.25, "identical_output": True},
                              "ar compiled": {"tokens_per_s": 800.0, "acceptance_mean": None},
                              "orthrus compiled": {"tokens_per_s": 1000.0, "acceptance_mean": 3.25, "identical_output": False}}],
        "forward": {"latency": [{"view": "ar", "cache_len": 128, "tokens": 1, "ms": 5.0},
                                {"view": "ar", "cache_len": 128, "tokens": 8, "ms": 7.5},
                                {"view": "diffusion", "cache_len": 128, "tokens": 8, "ms": 12.5}],
                    "settings": {"iters": 20},
                    "roofline": {"weight_bytes_per_token": 20_000_000, "kv_bytes_per_token": 5_000_000.0, "context": 250.0,
                                 "copy_bandwidth_gbs": 10.0, "decode_tokens_per_s": {"transformers": 100.0, "ar": 150.0}}},
    }


def test_main_table_cells_computed_by_hand():
    text = render(result(), "r.json")
    assert ("| method | tokens/s | vs Transformers `generate` | vs our eager AR | τ (tokens per iteration) | tokens per forward "
            "| identical output |") in text
    assert "| Transformers `generate` (AR, same weights) | 100.0 | 1.00x | 0.83x | – | – | – |" in text
    assert "| orthrus_min AR, eager | 120.0 | 1.20x | 1.00x | – | 1.00 | **no**, vs Transformers (1/2 prompts) |" in text
    assert "| orthrus_min Orthrus, eager | 150.0 | 1.50x | 1.25x | 4.00 | 2.00 | yes, vs our eager AR (2/2 prompts) |" in text
    assert "| orthrus_min Orthrus, compiled | 360.0 | 3.60x | 3.00x | 4.00 | 2.00 | yes, vs our eager AR (2/2 prompts) |" in text
    assert "Compiled Orthrus against our compiled AR: 1.20x." in text
    assert "per prompt, τ runs from 3.50 (`a.py:1`) to 4.50 (`b.py:2`)" in text
    assert "Orthrus 99.0 tokens/s against our AR's 110.0, 0.90x; τ = 3.00" in text  # the sampled rows, not in the table
    assert "| orthrus_min Orthrus (T" not in text


def test_provenance_names_command_machine_threads_and_versions():
    text = render(result(), "docs/results/r.json")
    assert "one run, `docs/results/r.json`, written by\n\n```bash\npython -m orthrus_min.bench all --threads 1 --compile\n```" in text
    assert "on a CPU (x86_64, 2 cores), 1 torch thread; Linux-x; Python 3.11.7, torch 2.13.0+cpu, transformers 5.25.0, " \
           "triton 3.9.0" in text
    assert "the shipped model, `orthrus-stdlib-tiny` (5.77M AR + 1.18M diffusion-view parameters)" in text
    assert "2 prompts of `heldout_prompts.jsonl` × 128 new tokens" in text and "the median of 3 timed runs" in text
    assert "smoke" not in text
    r = result()
    r["settings"]["smoke"] = True
    del r["argv"]
    text = render(r, "r.json")
    assert "**A smoke run**" in text and "python -m orthrus_min.bench all  # flags not recorded in the JSON" in text


def test_sweeps_latency_and_roofline_cells_computed_by_hand():
    text = render(result(), "r.json")
    # block size: 150 / 125 = 1.20x; compiled 375 / eager AR 125 = 3.00x, / compiled AR 250 = 1.50x
    assert "| 8 | 4.00 | 2.00 | 150.0 | 125.0 | 1.20x | 375.0 | 3.00x | 1.50x | yes |" in text
    # context: the mean prompt length (1000 + 1050) / 2, no compiled columns in an eager-only sweep
    assert "| 1,025 | 4.00 | 2.00 | 150.0 | 125.0 | 1.20x | yes |" in text
    # batch: 300 / 400, 1000 / 800; one compiled row differs from AR, so the row is not identical
    assert "| 4 (prompts repeated) | 400.0 | 300.0 | 0.75x | 800.0 | 1000.0 | 1.25x | 3.25 | **no** |" in text
    # one forward: 7.5 / 5 = 1.50x; break-even (12.5 + 7.5) / 5 = 4.00
    assert "| 128 | 8 | 5.00 | 7.50 | 12.50 | 1.50x | 4.00 |" in text
    # roofline: 10 GB/s / (20 + 5) MB = 400 tokens/s; 100 and 150 tokens/s are 25% and 38% of it
    assert "20.00 MB" in text and "5.00 MB: 25.00 MB per token" in text
    assert "10.00 GB/s ÷ 25.00 MB = 400 tokens/s" in text
    assert "| Transformers `generate` | 100.0 | 25% |" in text and "| orthrus_min AR, eager | 150.0 | 38% |" in text


def test_missing_sections_are_left_out_and_the_card_is_the_short_form():
    r = result()
    for key in ("batch_size_sweep", "forward", "context_sweep"):
        del r[key]
    r["table"]["methods"] = ["ar", "orthrus_greedy", "ar_sampled", "orthrus_sampled"]
    del r["table"]["overall"]["transformers"]
    for p in r["table"]["prompts"]:
        del p["identical"]["ar_vs_transformers"]
    r["settings"]["compile_mode"] = None  # an eager run: no compiled rows or columns anywhere
    del r["block_size_sweep"][0]["compiled"], r["table"]["overall"]["ar_compiled"], r["table"]["overall"]["orthrus_compiled"]
    text = render(r, "r.json")
    assert "**By block size K**" in text and "**Sampling**" in text
    for absent in ("**By context length**", "**By batch size B**", "**One forward**", "roofline", "vs Transformers",
                   "Transformers `generate`", "compiled"):
        assert absent not in text
    card = render(result(), "r.json", card=True)
    assert "**Decoding**" in card and "**By block size K**" in card and "**By context length**" in card
    assert "**Sampling**" not in card and "**By batch size B**" not in card and "roofline" not in card


# --------------------------------------------------------------------------- the command: rewrite, check, mistakes


@pytest.fixture()
def files(tmp_path, monkeypatch):
    """A JSON and a README holding a stale results region between other text, in the current folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.json").write_text(json.dumps(result()))
    (tmp_path / "README.md").write_text(f"# title\n\nbefore\n{begin_line('old.json')}\nstale | 1.0 |\n{END}\nafter\n")
    return tmp_path


def test_report_rewrites_only_the_region_then_check_passes(files, capsys):
    assert main(["report", "--json", "r.json", "--readme", "README.md"]) == 0
    assert capsys.readouterr().out == "README.md: results rewritten from r.json\n"
    text = (files / "README.md").read_text()
    assert text.startswith(f"# title\n\nbefore\n{begin_line('r.json')}\nEvery number in this section")
    assert text.endswith(f"| orthrus_min AR, eager | 150.0 | 38% |\n{END}\nafter\n") and "stale" not in text
    assert render(result(), "r.json") in text
    assert main(["report", "--json", "r.json", "--readme", "README.md"]) == 0
    assert capsys.readouterr().out == "README.md: unchanged from r.json\n"
    assert main(["report", "--json", str(files / "r.json"), "--readme", "README.md", "--check"]) == 0  # the path as shown
    assert capsys.readouterr().out == "README.md: as r.json renders\n"


def test_check_names_the_first_changed_number_and_writes_nothing(files, capsys):
    assert main(["report", "--json", "r.json", "--readme", "README.md"]) == 0
    text = (files / "README.md").read_text()
    row = "| orthrus_min Orthrus, eager | 150.0 | 1.50x | 1.25x |"
    edited = text.replace(row, row.replace("1.25x", "1.26x"))
    assert edited != text
    (files / "README.md").write_text(edited)
    capsys.readouterr()
    assert main(["report", "--json", "r.json", "--readme", "README.md", "--check"]) == 1
    out, err = capsys.readouterr()
    line = edited.split("\n").index(next(x for x in edited.split("\n") if "1.26x" in x)) + 1
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"README.md:{line}: differs from what r.json renders: the file has ")
    assert "1.26x" in err.split("the JSON renders")[0] and "1.25x" in err.split("the JSON renders")[1]
    assert (files / "README.md").read_text() == edited  # --check rewrites nothing
    # a number changed in the JSON instead: the README is now the stale one
    r = result()
    r["table"]["overall"]["orthrus_greedy"]["tokens_per_s"] = 151.0
    (files / "r.json").write_text(json.dumps(r))
    (files / "README.md").write_text(text)
    assert main(["report", "--json", "r.json", "--readme", "README.md", "--check"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "Orthrus, eager | 150.0 | 1.50x" in err.split("the JSON renders")[0]
    assert "Orthrus, eager | 151.0 | 1.51x" in err.split("the JSON renders")[1]


def test_check_names_a_missing_line_and_a_stale_begin_line(files, capsys):
    assert main(["report", "--json", "r.json", "--readme", "README.md"]) == 0
    text = (files / "README.md").read_text()
    (files / "README.md").write_text(text.replace(begin_line("r.json"), begin_line("other.json")))
    assert main(["report", "--json", "r.json", "--readme", "README.md", "--check"]) == 1
    assert capsys.readouterr().err.startswith("README.md:4: differs from what r.json renders")
    lines = text.split("\n")
    last = lines.index(END) - 1  # drop the region's last line: the file is one line short there
    (files / "README.md").write_text("\n".join(lines[:last] + lines[last + 1:]))
    assert main(["report", "--json", "r.json", "--readme", "README.md", "--check"]) == 1
    assert f"README.md:{last + 1}: differs" in capsys.readouterr().err


def test_report_renders_the_card_form_into_a_card(files, capsys):
    (files / "card.md").write_text(f"# card\n{begin_line('r.json')}\n{END}\n")
    assert main(["report", "--json", "r.json", "--card", "card.md"]) == 0
    card = (files / "card.md").read_text()
    assert render(result(), "r.json", card=True) in card and "**By batch size B**" not in card
    assert "stale" in (files / "README.md").read_text()  # a file not named is not touched


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


MISTAKES = [
    (["--json", "missing.json", "--readme", "README.md"], "error: missing.json: cannot read it (No such file or directory)"),
    (["--json", "bad.json", "--readme", "README.md"], "error: bad.json: not valid JSON ("),
    (["--json", "list.json", "--readme", "README.md"], "error: list.json: expected a JSON object, got a list"),
    (["--json", "other.json", "--readme", "README.md"],
     "error: other.json: not a JSON of `python -m orthrus_min.bench all` or `orthrus` (no 'table')"),
    (["--json", "partial.json", "--readme", "README.md"], "error: partial.json: an incomplete benchmark JSON (no 'weight_bytes_per_token')"),
    (["--json", "r.json", "--readme", "nothere.md"], "error: nothere.md: no such file\n"),
    (["--json", "r.json", "--readme", "plain.md"], "error: plain.md: no results region; put a line `<!-- results: begin"),
    (["--json", "r.json", "--readme", "open.md"], "error: open.md:2: the results region is not closed by a line "
                                                  "`<!-- results: end -->` after it"),
    (["--json", "r.json", "--readme", "two.md"], "error: two.md:4: a second results marker; a file holds one results region"),
    (["--json", "r.json", "--card", "plain.md"], "error: plain.md: no results region"),
    (["--readme", "README.md"], "error: the following arguments are required: --json"),
    (["--json", "r.json"], f"error: {CARD}: no such file (run from the repository root"),  # the default files: both
]


@pytest.mark.parametrize("argv, message", MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_a_mistake_is_one_error_line_and_nothing_is_written(files, argv, message, capsys):
    write(files / "bad.json", "{not json")
    write(files / "list.json", "[1, 2]")
    write(files / "other.json", json.dumps({"command": "ar", "settings": {}, "machine_info": {}}))
    partial = copy.deepcopy(result())
    del partial["forward"]["roofline"]["weight_bytes_per_token"]
    write(files / "partial.json", json.dumps(partial))
    write(files / "plain.md", "# no markers\n")
    write(files / "open.md", f"x\n{begin_line('r.json')}\ny\n")
    write(files / "two.md", f"{begin_line('r.json')}\n{END}\n\n{begin_line('r.json')}\n{END}\n")
    before = {p.name: p.read_bytes() for p in files.iterdir()}
    rc = main(["report", *argv])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(message), err
    assert {p.name: p.read_bytes() for p in files.iterdir()} == before


def test_every_file_is_checked_before_any_is_written(files, capsys):
    write(files / "plain.md", "# no markers\n")
    before = (files / "README.md").read_text()
    assert main(["report", "--json", "r.json", "--readme", "README.md", "--card", "plain.md"]) == 2
    assert (files / "README.md").read_text() == before and "plain.md: no results region" in capsys.readouterr().err


def test_a_benchmark_json_records_its_command_line(tmp_path, monkeypatch):
    monkeypatch.setattr("orthrus_min.bench.cli.run_benchmark", lambda args: ({"command": args.command}, "report\n"))
    argv = ["ar", "--out", str(tmp_path), "--repeats", "2"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "bench_ar.json").read_text())["argv"] == argv
