"""The benchmark commands in smoke mode, their one-line errors, the shared timer, and the bench package's layout.

Timings are not checked against values (they mean nothing on a shared CPU), only that every
number is there and has the right kind of size.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TEXT, save_checkpoint
from orthrus_min import files
from orthrus_min.bench import common
from orthrus_min.bench.cli import build_parser, main
from orthrus_min.bench.decode import long_prompt
from orthrus_min.checkpoint import load_model, save_model
from orthrus_min.model import init_diffusion_view
from orthrus_min.prompts import Prompt, read_prompt_file
from orthrus_min.tokenizer import Tokenizer

MASK_ID = 3  # "<|mask|>" in conftest's tokenizer
METRICS = {"new_tokens", "seconds", "tokens_per_s", "ttft_s", "decode_tokens_per_s", "num_forwards", "tokens_per_forward",
           "peak_memory_mb"}
ACCEPTANCE = {"acceptance_mean", "acceptance_histogram", "iterations"}
BENCH_DIR = Path(common.__file__).resolve().parent
# Small sweeps for the runs on the shipped model (K = 32): the smoke defaults, cut further.
FAST = ["--smoke", "--device", "cpu", "--block-sizes", "4", "--context-lengths", "32"]


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


def report_of(stdout: str) -> str:
    """The Markdown report in a command's stdout: everything before the final "wrote …" line."""
    return stdout[: stdout.rindex("\nwrote ")]


# --------------------------------------------------------------------------- the commands, smoke-sized


def test_all_smoke(orthrus_checkpoint, prompts_file, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["all", "--model", str(orthrus_checkpoint), "--prompts", str(prompts_file), "--smoke", "--max-prompts", "2",
               "--device", "cpu", "--out", str(out)])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| method | tokens/s |" in stdout and "## By block size" in stdout and "## One forward" in stdout
    r = json.loads((out / "bench_all.json").read_text())
    png, md = out / "bench_all.png", out / "bench_all.md"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert r["files"] == {"json": str(out / "bench_all.json"), "png": str(png), "markdown": str(md)}
    assert md.read_text() == report_of(stdout) and stdout.rstrip().endswith(f"and {png}")

    assert r["command"] == "all" and r["schema_version"] == 1 and r["machine"] and r["machine_info"]["torch"]
    assert r["machine_info"]["transformers"] and "transformers not installed" not in r["machine"]
    s = r["settings"]
    assert s["num_prompts"] == 2 and s["new_tokens"] == 8 and s["repeats"] == 1 and s["block_size"] == "auto" and s["block_room"] == 8
    assert s["device"] == "cpu" and "monotone" in s["memory_kind"] and s["params_diffusion"] > 0
    assert s["compile"] is False and s["compile_mode"] is None and s["compile_transformers"] is False
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
            assert m["tokens_per_s"] == pytest.approx(8 / m["seconds"]) and 0 < m["ttft_s"] < m["seconds"]
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
    assert [q["batch_size"] for q in r["batch_size_sweep"]] == [1, 2]
    for q in r["batch_size_sweep"]:  # B rows decoded together: every Orthrus row equals its AR row
        assert q["orthrus"]["identical_output"] is True and q["ar"]["tokens_per_forward"] == q["batch_size"]
        assert 1 <= q["orthrus"]["acceptance_mean"] <= 8 and q["orthrus"]["speedup_vs_ar"] > 0

    f = r["forward"]
    assert {(row["view"], row["tokens"]) for row in f["latency"]} == {("ar", 1), ("ar", 8), ("diffusion", 8)}
    assert all(x["ratio"] > 0 and x["break_even_acceptance"] > 0 for x in f["summary"])
    assert set(f["roofline"]["decode_tokens_per_s"]) == {"transformers", "ar"} and f["roofline"]["roofline_tokens_per_s"] > 0


def test_orthrus_json_path_and_clipped_sweeps(orthrus_checkpoint, prompts_file, tmp_path, capsys):
    path = tmp_path / "r.json"
    rc = main(["orthrus", "--model", str(orthrus_checkpoint), "--prompts", str(prompts_file), "--smoke", "--block-size", "4",
               "--block-sizes", "2,4,16", "--context-lengths", "40", "--device", "cpu", "--json", str(path), "--out", str(tmp_path)])
    assert rc == 0
    r = json.loads(path.read_text())
    assert r["table"]["methods"] == ["ar", "orthrus_greedy", "ar_sampled", "orthrus_sampled"] and "forward" not in r
    assert r["table"]["identical_output"] == {"orthrus_greedy_vs_ar": True}
    assert r["settings"]["block_size"] == 4 and [q["block_size"] for q in r["block_size_sweep"]] == [2, 4]  # 16 > the checkpoint's 8
    assert [q["context_tokens"] for q in r["context_sweep"]] == [40] and (tmp_path / "bench_orthrus.png").exists()
    assert r["files"]["json"] == str(path) and (tmp_path / "bench_orthrus.md").read_text() == report_of(capsys.readouterr().out)
    assert not (tmp_path / "bench_orthrus.json").exists()  # --json replaces the default path


def test_forward_smoke(orthrus_checkpoint, tmp_path, capsys):
    path = tmp_path / "forward.json"
    assert main(["forward", "--model", str(orthrus_checkpoint), "--smoke", "--device", "cpu", "--lengths", "0,24",
                 "--tokens", "1,4,8", "--json", str(path), "--out", str(tmp_path)]) == 0
    assert "T=8 / T=1" in capsys.readouterr().out
    r = json.loads(path.read_text())
    assert r["command"] == "forward" and r["settings"]["lengths"] == [0, 24] and r["settings"]["tokens"] == [1, 4, 8]
    assert r["settings"]["new_tokens"] == 8 and r["settings"]["prompt_len"] == 8
    assert len(r["latency"]) == 2 * (3 + 2) and all(row["ms"] > 0 for row in r["latency"])  # AR: T=1,4,8; diffusion: T=4,8
    assert {(x["cache_len"], x["tokens"]) for x in r["summary"]} == {(0, 4), (0, 8), (24, 4), (24, 8)}
    roof = r["roofline"]
    assert roof["copy_bandwidth_gbs"] > 0 and roof["weight_bytes_per_token"] > 0 and roof["kv_bytes_per_token"] > 0
    assert set(roof["decode_tokens_per_s"]) == set(roof["fraction_of_roofline"]) == {"transformers", "ar"}
    assert (tmp_path / "bench_forward.md").exists()


def test_ar_still_works(orthrus_checkpoint, tmp_path):
    assert main(["ar", "--model", str(orthrus_checkpoint), "--prompt-len", "5", "--max-new-tokens", "6", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "bench_ar.json").read_text())
    assert r["identical_output"] is True and r["ratio"] == pytest.approx(r["ours_tokens_per_s"] / r["transformers_tokens_per_s"])
    assert r["new_tokens"] == 6 and r["prompt_len"] == 5 and r["compile"] is False
    assert "| orthrus_min AR |" in (tmp_path / "bench_ar.md").read_text()


def test_random_model_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "rm"
    assert main(["random-model", "--preset", "tiny", "--out", str(out), "--seed", "1"]) == 0
    model = load_model(out)
    assert model.config.num_hidden_layers == 4 and model.config.vocab_size == 4096
    assert f"wrote a random tiny Qwen3 to {out}" in capsys.readouterr().out


# --------------------------------------------------------------------------- dev-only packages missing


def test_orthrus_without_matplotlib_writes_json_and_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails, as when it is not installed
    assert main(["orthrus", *FAST, "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    r = json.loads((tmp_path / "bench_orthrus.json").read_text())
    assert r["files"]["png"] is None and not (tmp_path / "bench_orthrus.png").exists()
    assert (tmp_path / "bench_orthrus.md").read_text() == report_of(out) and "## By block size" in out
    assert [line for line in err.splitlines() if "matplotlib" in line] == \
        ["[bench] plot skipped: matplotlib is not installed (pip install matplotlib)"]
    assert r["table"]["identical_output"] == {"orthrus_greedy_vs_ar": True}


def test_all_without_transformers_skips_its_rows(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert main(["all", *FAST, "--lengths", "16", "--tokens", "1,4", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    r = json.loads((tmp_path / "bench_all.json").read_text())
    assert r["table"]["methods"] == ["ar", "orthrus_greedy", "ar_sampled", "orthrus_sampled"]
    assert "ar_vs_transformers" not in r["table"]["speedup"] and set(r["forward"]["roofline"]["decode_tokens_per_s"]) == {"ar"}
    assert r["machine_info"]["transformers"] is None and "transformers not installed" in r["machine"]
    assert [line for line in err.splitlines() if "ransformers" in line] == \
        ["[bench] Transformers rows skipped: transformers is not installed (pip install transformers)"]
    assert "Transformers" not in report_of(out).split("## One forward")[0]


def test_machine_info_without_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    info = common.machine_info(torch.device("cpu"))
    assert info["transformers"] is None and info["torch"] == torch.__version__ and info["cpu_threads"] >= 1
    assert "transformers not installed" in common.machine_line(info)


# --------------------------------------------------------------------------- user mistakes: one line, exit 2, no work done


@pytest.fixture()
def no_model_loads(monkeypatch):
    """Makes loading any model (ours or Transformers') fail the test: errors must come before the work."""

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the error was found")

    monkeypatch.setattr("orthrus_min.checkpoint.load_model", boom)
    monkeypatch.setattr("orthrus_min.bench.reference.transformers_reference", boom)


@pytest.fixture()
def paths(tmp_path, tiny_checkpoint):
    """Named paths for the error table: a regular file, a folder, prompt files, an AR-only checkpoint."""
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "folder").mkdir()
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\nnot json\n')
    (tmp_path / "no_prompt.jsonl").write_text('{"prompt": "ok"}\n\n{"text": "no prompt key"}\n')
    (tmp_path / "bad_chat.jsonl").write_text('{"prompt": "ok", "chat": "yes"}\n')
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "trained").mkdir()  # someone's model: bench random-model must not write into it unasked
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / "trained" / name).write_text("{}")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "model.safetensors").symlink_to(tmp_path / "file")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "fifo_report").mkdir()
    os.mkfifo(tmp_path / "fifo_report" / "bench_orthrus.md")
    return {"TMP": str(tmp_path), "AR_ONLY": str(tiny_checkpoint[0])}


ERRORS = [  # (argv with {TMP} / {AR_ONLY} placeholders, a piece of the error message)
    # output paths
    ("orthrus --json {TMP}/file/r.json", "--json {TMP}/file/r.json: {TMP}/file is a file, not a folder"),
    ("orthrus --out {TMP}/file/sub", "--out {TMP}/file/sub: {TMP}/file is a file, not a folder"),
    ("all --out {TMP}/file", "--out {TMP}/file: {TMP}/file is a file, not a folder"),
    ("forward --json {TMP}/folder", "--json {TMP}/folder: is a folder; give a file name"),
    ("ar --json {TMP}/file/deeper/r.json", "{TMP}/file is a file, not a folder"),
    ("random-model --out {TMP}/file/model", "--out {TMP}/file/model: {TMP}/file is a file, not a folder"),
    # what may be replaced (files.py's rule): never another model unasked, a link, a FIFO
    ("random-model --out {TMP}/trained", "--out {TMP}/trained is not empty (config.json, tokenizer.json): pass --overwrite "
                                         "to replace its config.json and model.safetensors (other files stay), or give a "
                                         "new folder"),
    ("random-model --out {TMP}/linked --overwrite", "--out {TMP}/linked: model.safetensors is a symbolic link, not a file "
                                                    "this command wrote, so it is not replaced"),
    ("random-model --out {TMP}/file --overwrite", "--out {TMP}/file: {TMP}/file is a file, not a folder"),
    ("orthrus --out {TMP}/fifo_report", "--out {TMP}/fifo_report: bench_orthrus.md is a FIFO, not a file this command wrote"),
    ("orthrus --json {TMP}/fifo", "--json {TMP}/fifo: is a FIFO, not a regular file; give the path of a file to write"),
    # flag values
    ("ar --repeats 0", "argument --repeats: expected an integer >= 1, got '0'"),
    ("orthrus --max-new-tokens 0", "argument --max-new-tokens: expected an integer >= 1, got '0'"),
    ("forward --threads 0", "argument --threads: expected an integer >= 1, got '0'"),
    ("all --threads two", "argument --threads: expected an integer >= 1, got 'two'"),
    ("orthrus --block-sizes 4,x", "argument --block-sizes: expected comma-separated integers >= 1, got '4,x'"),
    ("orthrus --context-lengths 0", "argument --context-lengths: expected comma-separated integers >= 1"),
    ("orthrus --temperature -1", "argument --temperature: expected a number >= 0, got '-1'"),
    ("orthrus --warmup -1", "argument --warmup: expected an integer >= 0, got '-1'"),
    ("orthrus --attn flash", "argument --attn: invalid choice: 'flash'"),
    ("forward --iters 0", "argument --iters: expected an integer >= 1"),
    ("forward --lengths -3", "argument --lengths: expected comma-separated integers >= 0"),
    ("attn --block 0", "argument --block: expected an integer >= 1"),
    ("attn --layouts Qwen3-9B", "argument --layouts: unknown layout Qwen3-9B; choose from Qwen3-1.7B, Qwen3-8B"),
    ("random-model --preset huge --out {TMP}/m", "argument --preset: invalid choice: 'huge'"),
    ("random-model", "the following arguments are required: --out"),
    ("orthrus --new-tokens 8", "unrecognized arguments: --new-tokens 8"),  # renamed to --max-new-tokens
    ("nonsense", "argument command: invalid choice: 'nonsense'"),
    ("", "the following arguments are required: command"),
    # the model, its device, its limits
    ("orthrus --model {TMP}/no/such/folder", "{TMP}/no/such/folder: no such checkpoint folder"),
    ("ar --model {TMP}/file", "{TMP}/file: is a file; --model wants a checkpoint folder"),
    ("orthrus --model {AR_ONLY}", "diffusion view"),
    ("orthrus --device meta", "device 'meta' is not supported (use 'cpu' or 'cuda')"),
    ("orthrus --device cuda:x", "device 'cuda:x' is not a valid torch device"),
    ("forward --dtype float8", "dtype 'float8' is unknown"),
    ("orthrus --block-size 33", "block size 33 is larger than the checkpoint's block_size 32"),
    ("orthrus --max-new-tokens 2020", "--max-new-tokens 2020 and a block of 32 leave no room for a prompt"),
    ("forward --lengths 4000", "no cache length L in --lengths leaves room for 32 tokens in the model's context of 2048"),
    ("forward --prompt-len 2000 --max-new-tokens 100", "--prompt-len 2000 + --max-new-tokens 100 exceeds the model's context of 2048"),
    ("ar --prompt-len 2000 --max-new-tokens 100", "--prompt-len 2000 + --max-new-tokens 100 exceeds the model's context of 2048"),
    ("orthrus --context-lengths 100000", "--context-lengths 100000: the model's context of 2048 tokens leaves room for prompts "
                                         "of at most 1888 tokens (with --max-new-tokens 128 and a block of 32)"),
    ("all --context-lengths 64,1889,5000", "--context-lengths 1889,5000: the model's context of 2048 tokens"),
    ("forward --device cpu --copy-mib 100000000", "--copy-mib 100000000 needs 200,000,000 MiB (a source and a destination "
                                                  "buffer), but cpu has"),
    # prompt files
    ("orthrus --prompts {TMP}/bad.jsonl", "{TMP}/bad.jsonl:2: not valid JSON"),
    ("orthrus --prompts {TMP}/no_prompt.jsonl", '{TMP}/no_prompt.jsonl:3: expected an object with a non-empty string "prompt"'),
    ("orthrus --prompts {TMP}/bad_chat.jsonl", '{TMP}/bad_chat.jsonl:1: "chat" must be true or false, got "yes"'),
    ("orthrus --prompts {TMP}/empty.jsonl", "{TMP}/empty.jsonl: no prompts"),
    ("all --prompts {TMP}/missing.jsonl", "{TMP}/missing.jsonl: cannot read prompt file (No such file or directory)"),
]


@pytest.mark.parametrize("argv, message", ERRORS, ids=[a or "(no command)" for a, _ in ERRORS])
def test_user_mistake_is_one_error_line_before_any_work(argv, message, paths, no_model_loads, capsys, monkeypatch):
    monkeypatch.chdir(paths["TMP"])  # the default --out (bench-results) lands here, not in the repository
    rc = main([part.format(**paths) for part in argv.split()])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert message.format(**paths) in err


def test_ar_without_transformers_is_an_error(no_model_loads, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert main(["ar", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: bench ar compares with Transformers generate, but transformers is not installed " \
                                      "(pip install transformers)\n"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_folder(tmp_path, no_model_loads, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert main(["orthrus", "--out", str(folder)]) == 2
    finally:
        folder.chmod(0o700)
    assert capsys.readouterr().err == f"error: --out {folder}: cannot write there (Permission denied)\n"


def test_unwritable_out_folder_simulated(tmp_path, no_model_loads, capsys, monkeypatch):
    """The same check where the test runs as root (which may write anywhere): creating a file there fails."""

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files.tempfile, "TemporaryFile", refuse)
    assert main(["all", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr() == ("", f"error: --out {tmp_path}: cannot write there (Permission denied)\n")


def test_copy_size_is_checked_against_free_device_memory(monkeypatch):
    """On CUDA the probe's two buffers are checked against torch.cuda.mem_get_info (faked here: no GPU needed)."""
    from orthrus_min.errors import OrthrusError

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000 * 2**20, 80 * 2**30))
    common.check_copy_size(torch.device("cuda"), 500)  # 1,000 MiB: fits exactly
    with pytest.raises(OrthrusError, match=r"--copy-mib 501 needs 1,002 MiB \(a source and a destination buffer\), but "
                                           r"cuda has 1,000 MiB available; give a smaller --copy-mib"):
        common.check_copy_size(torch.device("cuda"), 501)
    assert common.available_mib(torch.device("cpu")) > 16  # the CPU's: MemAvailable (or all memory)


def test_random_model_overwrite_replaces_only_its_own_files(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["random-model", "--preset", "tiny", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    before = (out / "model.safetensors").read_bytes()
    assert main(["random-model", "--preset", "tiny", "--out", str(out), "--seed", "3"]) == 2
    assert "is not empty (config.json, model.safetensors, notes.txt): pass --overwrite" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert main(["random-model", "--preset", "tiny", "--out", str(out), "--seed", "3", "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() != before and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]  # no temporary left


def test_full_disk_while_writing_the_report_is_one_line_and_leaves_no_half_file(orthrus_checkpoint, prompts_file, tmp_path,
                                                                                  capsys, monkeypatch):
    """The plot (when matplotlib is there), the Markdown and the JSON are each written under a temporary name and
    renamed: a full disk (os.fsync raising ENOSPC) is one line, and no report file, whole or half, is left."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "r"
    rc = main(["orthrus", *FAST, "--model", str(orthrus_checkpoint), "--prompts", str(prompts_file), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"error: --out {out}/bench_orthrus.") and \
        err[-1].endswith(": cannot write (No space left on device)")
    assert [line for line in err if line.startswith("error:") or "Traceback" in line] == [err[-1]]
    assert list(out.iterdir()) == []


def test_random_model_on_a_failing_disk_is_one_line(tmp_path):
    """A real write failure (a file-size limit: EFBIG) inside safetensors' writer, in a subprocess."""
    root = str(BENCH_DIR.parent.parent)
    code = ("import os, resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)); sys.argv = ['bench'] + sys.argv[1:]; "
            "runpy.run_module('orthrus_min.bench', run_name='__main__')")
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    out = tmp_path / "m"
    proc = subprocess.run([sys.executable, "-c", code, "random-model", "--preset", "tiny", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr == f"error: --out {out}: cannot write the model (File too large)\n"
    assert list(out.iterdir()) == []


def test_module_entry_point_reports_one_line(tmp_path):
    """`python -m orthrus_min.bench` (the real __main__) exits 2 with one error line; no traceback."""
    root = str(BENCH_DIR.parent.parent)  # this checkout, whatever orthrus_min is installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "orthrus_min.bench", "ar", "--repeats", "0"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "error: argument --repeats: expected an integer >= 1, got '0' (see python -m orthrus_min.bench ar --help)\n"


def subparsers() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_every_flag_has_help_and_states_its_default_once():
    import argparse

    commands = subparsers()
    assert set(commands) == {"all", "orthrus", "ar", "forward", "random-model", "attn", "gpu", "report", "threads"}
    for name, sp in commands.items():
        stated = 0
        for action in sp._actions:
            if action.dest == "help":
                continue
            flag = f"{name} {action.option_strings[0]}"
            assert action.help and len(action.help) > 10, flag
            assert action.help.count("(default: ") <= 1, flag
            if action.default not in (None, False) and not action.required:  # a real default: the help must state it
                assert "(default: " in action.help, flag
            stated += "(default: " in action.help
        assert sp.formatter_class is argparse.RawDescriptionHelpFormatter, name  # adds no second "(default: …)"
        assert " ".join(sp.format_help().split()).count("(default: ") == stated, name


def test_threads_on_every_command_that_runs_a_model_and_max_new_tokens_renamed():
    commands = subparsers()
    for name in ("all", "orthrus", "ar", "forward", "random-model"):
        flags = {s for a in commands[name]._actions for s in a.option_strings}
        assert "--threads" in flags, name
        assert "--new-tokens" not in flags, name
        if name != "random-model":
            assert {"--json", "--out", "--compile", "--compile-mode", "--compile-transformers"} <= flags, name
    for name in ("all", "orthrus", "ar", "forward"):
        assert "--max-new-tokens" in {s for a in commands[name]._actions for s in a.option_strings}, name


def test_help_shows_the_prompt_format(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["orthrus", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert '"chat": true' in out and "(default: 0.7)" in out and out.count("(default: bench-results)") == 1


def test_threads_flag_sets_torch_threads(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    monkeypatch.setattr("orthrus_min.bench.cli.run_benchmark", lambda args: ({"command": args.command}, "report\n"))
    assert main(["ar", "--threads", "3", "--out", str(tmp_path)]) == 0
    assert seen == [3] and json.loads((tmp_path / "bench_ar.json").read_text())["command"] == "ar"


def test_compile_flags_route_through_one_function(monkeypatch):
    from argparse import Namespace

    from orthrus_min.bench.decoders import compile_mode_of, prepare_compiled

    eager = Namespace(compile=False, compile_mode="max-autotune", compile_transformers=False)
    ours = Namespace(compile=True, compile_mode="reduce-overhead", compile_transformers=False)
    both = Namespace(compile=True, compile_mode="default", compile_transformers=True)
    assert compile_mode_of(eager) is None and compile_mode_of(eager, transformers=True) is None
    assert compile_mode_of(ours) == "reduce-overhead" and compile_mode_of(ours, transformers=True) is None  # reference: eager
    assert compile_mode_of(both, transformers=True) == "default"

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compiled.append((fn, kwargs)) or "compiled forward")
    model = torch.nn.Linear(2, 2)
    eager_forward = model.forward
    prepare_compiled(model, None)
    assert model.forward == eager_forward and compiled == []
    prepare_compiled(model, "reduce-overhead")
    assert model.forward == "compiled forward" and compiled == [(eager_forward, {"dynamic": True, "mode": "reduce-overhead"})]


# --------------------------------------------------------------------------- prompts


def test_long_prompt_ends_with_the_prompt_at_the_exact_length(orthrus_checkpoint):
    tok = Tokenizer(orthrus_checkpoint)
    lines = TEXT.splitlines(keepends=True)
    prompts = [Prompt(str(i), "".join(lines[i : i + 2])) for i in range(0, 12, 2)]
    ids, repeated = long_prompt(prompts, 1, 30, tok)
    assert len(ids) == 30 and not repeated and ids[-len(tok.encode(prompts[1].text)) + 1:] == tok.encode(prompts[1].text)[1:]
    ids, repeated = long_prompt(prompts, 1, 400, tok)  # more than all prompts together: the filler wraps around
    assert len(ids) == 400 and repeated


def test_read_prompts_fields(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prompt": "x", "chat": true, "enable_thinking": false}\n\n{"prompt": "y"}\n')
    assert read_prompt_file(path) == [Prompt("a", "x", True, enable_thinking=False), Prompt("p.jsonl:3", "y", False)]


# --------------------------------------------------------------------------- the one timer and the one bandwidth probe


def test_time_calls_on_cpu_warms_up_then_times_each_call():
    calls = []

    def fn():
        calls.append(time.perf_counter())
        time.sleep(0.01)
        return len(calls)

    timed = common.time_calls(fn, torch.device("cpu"), common.Timing(iters=3, warmup_calls=2))
    assert len(calls) == 5 and timed.result == 5 and len(timed.seconds) == 3
    assert all(0.01 <= s < 0.5 for s in timed.seconds) and timed.median == sorted(timed.seconds)[1]

    calls.clear()
    common.time_calls(fn, torch.device("cpu"), common.Timing(iters=1, warmup_calls=1, warmup_s=0.05))
    assert calls[-1] - calls[0] >= 0.049 and len(calls) >= 3  # the warm-up went on for 0.05 s, past its one call


def test_end_to_end_timing_is_one_wall_clock_call():
    timed = common.time_calls(lambda: "done", torch.device("cpu"))
    assert timed.result == "done" and len(timed.seconds) == 1 and 0 <= timed.seconds[0] < 0.1
    with pytest.raises(ValueError, match="device clock only"):
        common.Timing(clock="wall", flush_l2=True)
    with pytest.raises(ValueError, match="iters must be >= 1"):
        common.Timing(iters=0)


def test_time_calls_on_cuda_flushes_spins_and_brackets_each_call_with_events(monkeypatch):
    """The GPU path, on a fake torch.cuda: the order of operations is what the README's kernel numbers rely on."""
    log = []

    class Event:
        clock = 0.0

        def __init__(self, enable_timing):
            assert enable_timing
            self.t = None

        def record(self):
            Event.clock += 1.5  # ms: every call takes 1.5 ms between its start and end events
            self.t = Event.clock
            log.append("record")

        def elapsed_time(self, end):
            return end.t - self.t

    class Flush:
        def zero_(self):
            log.append("flush")

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: log.append(f"spin {cycles}"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("sync"))
    monkeypatch.setattr(common, "l2_flush_buffer", lambda device: Flush())

    def fn():
        log.append("call")
        return "out"

    timing = common.Timing(iters=2, warmup_calls=10, warmup_s=0.0, flush_l2=True, spin=True)
    timed = common.time_calls(fn, torch.device("cuda"), timing)
    assert log[:11] == ["call"] * 10 + ["sync"]  # warm-up: 10 calls, a synchronize every 10th
    assert log[11] == "sync"  # then the device is idle before timing starts
    per_call = ["flush", f"spin {common.SPIN_CYCLES}", "record", "call", "record"]
    assert log[12:] == per_call * 2 + ["sync"]
    assert timed.result == "out" and timed.seconds == [pytest.approx(1.5e-3)] * 2


def test_kernel_timing_matches_the_readme_measurements():
    """bench attn's numbers in the README: GPU spun and L2 flushed before every call, each cell warmed up >= 0.1 s."""
    from orthrus_min.bench.attn import KERNEL_TIMING

    assert KERNEL_TIMING.clock == "device" and KERNEL_TIMING.flush_l2 and KERNEL_TIMING.spin
    assert KERNEL_TIMING.warmup_s >= 0.1 and KERNEL_TIMING.warmup_calls >= 10
    assert common.L2_FLUSH_BYTES >= 256 * 2**20


def test_copy_bandwidth_probe_on_cpu():
    gbs = common.copy_bandwidth_gbs(torch.device("cpu"), 4)
    assert 0.05 < gbs < 10_000  # any real machine copies 4 MiB at well over 50 MB/s


def test_first_mismatch():
    assert common.first_mismatch([1, 2, 3], [1, 2, 3]) is None
    assert common.first_mismatch([1, 2, 3], [1, 5, 3]) == 1
    assert common.first_mismatch([1, 2], [1, 2, 3]) == 2


# --------------------------------------------------------------------------- the package's layout


def imports_of(path: Path) -> list[tuple[int, str, bool]]:
    """(level, module, at top level) of every import in a file: level 1 = `.x`, 2 = `..x`, 0 = absolute."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(0, alias.name, id(node) in top) for alias in node.names]
    return found


def test_common_imports_no_other_bench_module():
    for level, module, _ in imports_of(BENCH_DIR / "common.py"):
        assert level != 1, f"common.py imports .{module}"
        assert not module.startswith("orthrus_min.bench"), module


def test_no_dev_only_package_at_import_time_and_no_import_cycles():
    graph = {}
    for path in sorted(BENCH_DIR.glob("*.py")):
        deps = set()
        for level, module, top in imports_of(path):
            root = module.split(".")[0]
            assert not (top and root in ("transformers", "matplotlib")), f"{path.name} imports {module} at import time"
            if level == 1 and module:
                deps.add(module.split(".")[0])
        graph[path.stem] = deps
    assert {"cli", "common", "decode", "forward", "ar", "attn", "__main__"} <= set(graph)

    def visit(name, stack):
        assert name not in stack, f"import cycle: {' -> '.join(stack + [name])}"
        for dep in graph.get(name, ()):
            visit(dep, stack + [name])

    for name in graph:
        visit(name, [])
    assert not (BENCH_DIR.parent / "bench.py").exists() and not (BENCH_DIR.parent / "bench_decode.py").exists()
    assert not (BENCH_DIR.parent / "bench_forward.py").exists()


def test_every_bench_module_docstring_gives_its_command():
    for path in sorted(BENCH_DIR.glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "python -m orthrus_min.bench" in doc, path.name
        assert "--new-tokens" not in doc and "bench_decode.py" not in doc and "bench_forward.py" not in doc, path.name
