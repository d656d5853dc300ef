"""The generate command line as a user meets it: every bad input is one line `error: …` and exit 2, never a
traceback; flags that change nothing get a warning; output into a closed pipe ends quietly; prompt files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orthrus_min.generate import main
from orthrus_helpers import orthrus_checkpoint

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def orthrus_ckpt(tmp_path_factory):
    """An Orthrus checkpoint (block_size 8) with a tokenizer and the Qwen3 chat template."""
    return orthrus_checkpoint(tmp_path_factory.mktemp("orthrus"), eos_token_id=2)


@pytest.fixture()
def ckpt(tmp_path, orthrus_ckpt):
    """A private copy that a test may break."""
    folder = tmp_path / "ckpt"
    shutil.copytree(orthrus_ckpt, folder)
    return folder


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def set_field(name, value):
    def change(d):
        d[name] = value
        return d
    return change


def nan_weight(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    state["model.layers.0.mlp.up_proj.weight"][3, 4] = float("nan")
    save_file(state, folder / "model.safetensors")


def big_tokenizer(folder: Path) -> None:
    """A tokenizer with more tokens than the model has embedding rows (320)."""
    from conftest import make_tokenizer_files

    make_tokenizer_files(folder, vocab_size=300)
    tok = json.loads((folder / "tokenizer.json").read_text())
    start = max(tok["model"]["vocab"].values()) + 1
    for i in range(40):
        tok["added_tokens"].append({"id": start + i, "content": f"<|extra_{i}|>", "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": True})
    (folder / "tokenizer.json").write_text(json.dumps(tok))


# (id, how to break the checkpoint or None, command-line arguments after --model, the expected error line's start)
BAD_INPUTS = [
    ("missing-folder", None, ["--model", "/no/such/dir", "--prompt", "x"], "error: /no/such/dir: no such checkpoint folder"),
    ("model-empty", None, ["--model", "", "--prompt", "x"], "error: the checkpoint name is empty"),
    ("max-new-tokens-0", None, ["--prompt", "x", "--max-new-tokens", "0"], "error: argument --max-new-tokens: expected an integer >= 1, got '0'"),
    ("max-new-tokens-text", None, ["--prompt", "x", "--max-new-tokens", "ten"], "error: argument --max-new-tokens: expected an integer >= 1, got 'ten'"),
    ("temperature", None, ["--prompt", "x", "--temperature", "-1"], "error: temperature must be >= 0"),
    ("temperature-nan", None, ["--prompt", "x", "--temperature", "nan"], "error: temperature must be >= 0 and finite (0 = greedy), got nan"),
    ("temperature-inf", None, ["--prompt", "x", "--temperature", "inf"], "error: temperature must be >= 0 and finite (0 = greedy), got inf"),
    ("top-p", None, ["--prompt", "x", "--temperature", "1", "--top-p", "0"], "error: top_p must be in (0, 1]"),
    ("top-k", None, ["--prompt", "x", "--top-k", "-3"], "error: top_k must be >= 0"),
    ("seed-beyond-64-bits", None, ["--prompt", "x", "--temperature", "1", "--seed", str(2**64)], "error: seed must be in 0 … 2**63-1"),
    ("empty-prompt", None, ["--prompt", ""], "error: the prompt is empty"),
    ("dtype", None, ["--prompt", "x", "--dtype", "int3"], "error: dtype 'int3' is unknown"),
    ("device", None, ["--prompt", "x", "--device", "tpu"], "error: device 'tpu'"),
    ("context", None, ["--prompt", "x", "--max-new-tokens", "5000"], "error: prompt (1 tokens) + max_new_tokens (5000)"),
    ("block-size-0", None, ["--prompt", "x", "--block-size", "0"], "error: block size must be an int >= 1"),
    ("block-size-9", None, ["--prompt", "x", "--block-size", "9"], "error: block size 9 is larger than the checkpoint's block_size 8"),
    ("check-in-ar-mode", None, ["--prompt", "x", "--mode", "ar", "--check"], "error: --check applies to orthrus decoding"),
    ("unknown-flag", None, ["--prompt", "x", "--fast"], "error: unrecognized arguments: --fast"),
    ("no-prompt", None, [], "error: one of the arguments --prompt --prompt-file --prompt-text-file is required"),
    ("prompt-and-text-file", None, ["--prompt", "x", "--prompt-text-file", "p.txt"],
     "error: argument --prompt-text-file: not allowed with argument --prompt"),
    ("prompt-not-utf8", None, ["--prompt", "abc\udcff\udcfe"],  # what Python makes of argv bytes b"abc\xff\xfe"
     "error: --prompt is not valid Unicode: a lone surrogate U+DCFF at character 3 (byte 0xff: the text is not UTF-8)"),
    ("prompt-not-utf8-mlx", None, ["--prompt", "abc\udcff\udcfe", "--backend", "mlx"],  # refused before MLX is needed
     "error: --prompt is not valid Unicode: a lone surrogate U+DCFF at character 3"),
    ("system-not-utf8", None, ["--prompt", "x", "--chat", "--system", "\udce9t\udce9"],
     "error: --system is not valid Unicode: a lone surrogate U+DCE9 at character 0 (byte 0xe9: the text is not UTF-8)"),
    ("threads-0", None, ["--prompt", "x", "--threads", "0"], "error: argument --threads: expected an integer >= 1, got '0'"),
    ("compile-mode", None, ["--prompt", "x", "--compile", "--compile-mode", "fast"], "error: compile mode 'fast' is unknown"),
    ("mlx-with-triton", None, ["--prompt", "x", "--backend", "mlx", "--attn", "triton"], "error: --attn triton applies to the torch backend"),
    ("mlx-with-cuda", None, ["--prompt", "x", "--backend", "mlx", "--device", "cuda"], "error: --device cuda is not an MLX device"),
    ("mlx-with-compile", None, ["--prompt", "x", "--backend", "mlx", "--compile"], "error: --compile applies to the torch backend"),
    # the checkpoint
    ("config-max-positions-huge", lambda f: edit_json(f / "config.json", set_field("max_position_embeddings", 10**12)),
     ["--prompt", "x"], "error: config.json: max_position_embeddings=1000000000000 is more than this implementation supports "
     "(1048576 = 2**20 positions): its RoPE tables alone would take 119,209 GiB"),
    ("config-max-positions-float", lambda f: edit_json(f / "config.json", set_field("max_position_embeddings", 1e12)),
     ["--prompt", "x"], "error: config.json: field 'max_position_embeddings' must be an integer >= 1, got 1000000000000.0"),
    ("config-is-a-list", lambda f: (f / "config.json").write_text("[1, 2]"), ["--prompt", "x"],
     "error: config.json: expected a JSON object, got a list"),
    ("config-field-is-a-string", lambda f: edit_json(f / "config.json", set_field("hidden_size", "64")), ["--prompt", "x"],
     "error: config.json: field 'hidden_size' must be an integer >= 1, got '64'"),
    ("config-missing-field", lambda f: edit_json(f / "config.json", lambda d: {k: v for k, v in d.items() if k != "hidden_size"}),
     ["--prompt", "x"], "error: config.json: required field 'hidden_size' is missing"),
    ("config-not-json", lambda f: (f / "config.json").write_text("{"), ["--prompt", "x"], "error: "),
    ("tokenizer-config-invalid", lambda f: (f / "tokenizer_config.json").write_text("{'chat_template': 1"), ["--prompt", "x"],
     "error: "),
    ("tokenizer-config-a-list", lambda f: (f / "tokenizer_config.json").write_text("[]"), ["--prompt", "x"],
     "error: "),
    ("tokenizer-larger-than-model", big_tokenizer, ["--prompt", "x"], "error: "),
    ("nan-weights", nan_weight, ["--prompt", "x"], "error: "),
    ("generation-config-invalid", lambda f: (f / "generation_config.json").write_text("not json"), ["--prompt", "x"], "error: "),
    ("chat-without-template", lambda f: (f / "tokenizer_config.json").write_text("{}"), ["--prompt", "hi", "--chat"], "error: "),
    ("no-mask-token-id", lambda f: edit_json(f / "config.json", lambda d: {k: v for k, v in d.items() if k != "mask_token_id"}),
     ["--prompt", "x"], "error: config.json has model_type 'orthrus' but no mask_token_id"),
    # prompt files
    ("prompt-file-missing", None, ["--prompt-file", "/no/such/prompts.jsonl"], "error: /no/such/prompts.jsonl: cannot read prompt file"),
    ("prompt-file-not-utf8", "file:\xff\xfe not utf-8", ["--prompt-file", "{file}"], "error: "),
    ("prompt-file-bad-line", 'file:{"prompt": "a"}\n\n{"prompt": 3}\n', ["--prompt-file", "{file}"], "error: "),
    ("prompt-file-not-jsonl", "file:just some text\n", ["--prompt-file", "{file}"], "error: "),
    ("prompt-file-empty", "file:\n\n", ["--prompt-file", "{file}"], "error: "),
    ("prompt-file-bad-budget", 'file:{"prompt": "a", "max_new_tokens": 0}\n', ["--prompt-file", "{file}"], "error: "),
    ("prompt-file-too-long", 'file:{"prompt": "a"}\n{"id": "big", "prompt": "b", "max_new_tokens": 3000}\n', ["--prompt-file", "{file}"],
     "error: prompt 'big': 1 tokens + max_new_tokens 3000 + one block (8) exceed the model's context of 2048 tokens"),
    ("prompt-file-lone-surrogate", 'file:{"prompt": "ok"}\n{"prompt": "abc\\udcff"}\n', ["--prompt-file", "{file}"], "error: "),
    ("prompt-file-system-lone-surrogate", 'file:{"prompt": "a", "chat": true, "system": "\\ud800"}\n', ["--prompt-file", "{file}"],
     "error: "),
    ("prompt-file-id-lone-surrogate", 'file:{"id": "\\udcff", "prompt": "a"}\n', ["--prompt-file", "{file}"], "error: "),
    ("prompt-file-unknown-key", 'file:{"prompt": "a", "max_tokens": 5}\n', ["--prompt-file", "{file}"], "error: "),
    ("prompt-file-temperature", 'file:{"prompt": "a"}\n{"prompt": "b", "temperature": 0.5}\n', ["--prompt-file", "{file}"],
     "error: "),
    ("prompt-file-system-without-chat", 'file:{"prompt": "a", "system": "be brief"}\n', ["--prompt-file", "{file}"], "error: "),
    ("prompt-file-thinking-without-chat", 'file:{"prompt": "a", "enable_thinking": false}\n', ["--prompt-file", "{file}"],
     "error: "),
    ("prompt-file-chat-false-with-system", 'file:{"prompt": "a", "chat": false, "system": "S"}\n',
     ["--prompt-file", "{file}", "--chat"], "error: "),
    ("prompt-file-id-object", 'file:{"id": {"a": 1}, "prompt": "a"}\n', ["--prompt-file", "{file}"], "error: "),
    ("prompt-file-id-list", 'file:{"id": [1], "prompt": "a"}\n', ["--prompt-file", "{file}"], "error: "),
    ("prompt-file-id-bool", 'file:{"id": true, "prompt": "a"}\n', ["--prompt-file", "{file}"], "error: "),
    ("prompt-file-id-nan", 'file:{"id": NaN, "prompt": "a"}\n', ["--prompt-file", "{file}"], "error: "),
    ("prompt-file-id-infinite", 'file:{"id": 1e400, "prompt": "a"}\n', ["--prompt-file", "{file}"], "error: "),
    ("prompt-file-duplicate-key", 'file:{"prompt": "a", "prompt": "b"}\n', ["--prompt-file", "{file}"], "error: "),
    ("prompt-file-is-a-folder", None, ["--prompt-file", "/"], "error: /: is a folder, not a prompt file"),
    ("prompt-file-dev-zero", None, ["--prompt-file", "/dev/zero"],
     "error: /dev/zero: line 1 is longer than 4 MiB, the longest line a prompt file may have (is it a JSONL file?)"),
    ("prompt-text-file-missing", None, ["--prompt-text-file", "/no/such/prompt.txt"],
     "error: /no/such/prompt.txt: cannot read prompt file (No such file or directory)"),
    ("prompt-text-file-not-utf8", "file:abc\xff\xfe", ["--prompt-text-file", "{file}"], "error: "),
    ("prompt-text-file-empty", "file:", ["--prompt-text-file", "{file}"], "error: "),
    ("prompt-text-file-is-a-folder", None, ["--prompt-text-file", "/"], "error: /: is a folder, not a prompt file"),
    ("prompt-text-file-dev-zero", None, ["--prompt-text-file", "/dev/zero"],
     "error: /dev/zero: more than 4 MiB, the most that a prompt may hold"),
    ("batch-size-0", 'file:{"prompt": "a"}\n', ["--prompt-file", "{file}", "--batch-size", "0"], "error: argument --batch-size"),
    ("output-under-a-file", 'file:{"prompt": "a"}\n', ["--prompt-file", "{file}", "--output", "{file}/out.jsonl"], "error: --output "),
    ("output-a-folder", 'file:{"prompt": "a"}\n', ["--prompt-file", "{file}", "--output", "/"],
     "error: --output /: is a folder; give a file name"),
    ("output-a-device", 'file:{"prompt": "a"}\n', ["--prompt-file", "{file}", "--output", "/dev/null"],
     "error: --output /dev/null: is a character device, not a regular file; give the path of a file to write"),
    ("compare-with-prompt-file", 'file:{"prompt": "a"}\n', ["--prompt-file", "{file}", "--compare"],
     "error: --compare works with one --prompt, not with --prompt-file"),
]

MESSAGES = {  # what the line must also say, for the cases above whose line starts with a path
    "config-not-json": "config.json: not valid JSON",
    "tokenizer-config-invalid": "tokenizer_config.json: not valid JSON",
    "tokenizer-config-a-list": "tokenizer_config.json: expected a JSON object, got a list",
    "tokenizer-larger-than-model": "the tokenizer has 340 tokens but the model's vocabulary has 320 rows",
    "nan-weights": "1 tensor(s) hold NaN or infinite values (model.layers.0.mlp.up_proj.weight)",
    "generation-config-invalid": "generation_config.json: not valid JSON",
    "chat-without-template": "the checkpoint has no chat_template",
    "prompt-file-not-utf8": "prompts.jsonl:1: not valid UTF-8 (byte 0xff at column 1)",
    "prompt-file-bad-line": 'prompts.jsonl:3: expected an object with a non-empty string "prompt"',
    "prompt-file-not-jsonl": "prompts.jsonl:1: not valid JSON",
    "prompt-file-empty": "prompts.jsonl: no prompts",
    "prompt-file-bad-budget": 'prompts.jsonl:1: "max_new_tokens" must be >= 1, got 0',
    "prompt-file-lone-surrogate": 'prompts.jsonl:2: "prompt" is not valid Unicode: a lone surrogate U+DCFF at character 3',
    "prompt-file-system-lone-surrogate": 'prompts.jsonl:1: "system" is not valid Unicode: a lone surrogate U+D800 at character 0',
    "prompt-file-id-lone-surrogate": 'prompts.jsonl:1: "id" is not valid Unicode',
    "prompt-file-unknown-key": 'prompts.jsonl:1: unknown key "max_tokens" (a line may have id, prompt, chat, system, '
                               "enable_thinking, max_new_tokens, seed; sampling settings are the run's flags)",
    "prompt-file-temperature": 'prompts.jsonl:2: unknown key "temperature"',
    "prompt-file-system-without-chat": 'prompts.jsonl:1: "system" applies to chat prompts; add "chat": true (or run with --chat)',
    "prompt-file-thinking-without-chat": 'prompts.jsonl:1: "enable_thinking" applies to chat prompts',
    "prompt-file-chat-false-with-system": 'prompts.jsonl:1: "system" applies to chat prompts',
    "prompt-file-id-object": 'prompts.jsonl:1: "id" must be a string or a number, got {"a": 1}',
    "prompt-file-id-list": 'prompts.jsonl:1: "id" must be a string or a number, got [1]',
    "prompt-file-id-bool": 'prompts.jsonl:1: "id" must be a string or a number, got true',
    "prompt-file-id-nan": 'prompts.jsonl:1: "id" must be a string or a number, got NaN',
    "prompt-file-id-infinite": 'prompts.jsonl:1: "id" must be a string or a number, got Infinity',
    "prompt-file-duplicate-key": 'prompts.jsonl:1: the key "prompt" is given twice',
    "output-under-a-file": "prompts.jsonl is a file, not a folder",
    "prompt-text-file-not-utf8": "prompts.jsonl: not a UTF-8 text file (invalid start byte at byte 3)",
    "prompt-text-file-empty": "prompts.jsonl: the prompt file is empty",
}


@pytest.mark.parametrize("case, breaker, args, message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, ckpt, case, breaker, args, message):
    if callable(breaker):
        breaker(ckpt)
    elif isinstance(breaker, str):  # the content of a prompt file
        (tmp_path / "prompts.jsonl").write_bytes(breaker.removeprefix("file:").encode("latin-1"))
    args = [a.replace("{file}", str(tmp_path / "prompts.jsonl")) for a in args]
    if "--model" not in args:
        args = ["--model", str(ckpt)] + args
    code, out, err = run_cli(capsys, *args)
    assert code == 2, err
    assert err.startswith(message) and MESSAGES.get(case, "") in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and out == ""


def test_nothing_is_written_when_a_prompt_file_fails(capsys, tmp_path, ckpt):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b", "chat": true}\n')
    (ckpt / "tokenizer_config.json").write_text("{}")  # the second request cannot be rendered
    code, out, err = run_cli(capsys, "--model", ckpt, "--prompt-file", tmp_path / "p.jsonl", "--output", tmp_path / "out.jsonl")
    assert code == 2 and "has no chat_template" in err
    assert not (tmp_path / "out.jsonl").exists() and out == ""


@pytest.mark.parametrize("args, warning", [
    (["--top-k", "5"], "warning: --top-k has no effect at temperature 0 (greedy decoding)"),
    (["--top-p", "0.9", "--seed", "3"], "warning: --top-p has no effect at temperature 0 (greedy decoding)"),
    (["--system", "be brief"], "warning: --system has no effect without --chat"),
    (["--no-thinking"], "warning: --no-thinking has no effect without --chat"),
    (["--batch-size", "4"], "warning: --batch-size has no effect without --prompt-file"),
    (["--compile-mode", "default"], "warning: --compile-mode has no effect without --compile"),
], ids=["top-k", "top-p", "system", "no-thinking", "batch-size", "compile-mode"])
def test_flags_without_effect_get_a_warning(capsys, orthrus_ckpt, args, warning):
    code, out, err = run_cli(capsys, "--model", orthrus_ckpt, "--prompt", "x", "--max-new-tokens", "3", *args)
    assert code == 0 and warning in err.splitlines()


def test_sampling_defaults_come_from_generation_config(capsys, ckpt):
    (ckpt / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9,
                                                             "eos_token_id": [2, 7]}))
    code, out, err = run_cli(capsys, "--model", ckpt, "--prompt", "x", "--max-new-tokens", "4", "--stats", "--seed", "1")
    assert code == 0
    assert "sampling: temperature 0.7, top-k 20, top-p 0.9 (from generation_config.json)" in err
    code, out, err = run_cli(capsys, "--model", ckpt, "--prompt", "x", "--max-new-tokens", "4", "--stats", "--temperature", "0")
    assert code == 0 and "sampling: greedy (temperature 0) (from flags --temperature, generation_config.json)" in err
    (ckpt / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.7}))
    code, out, err = run_cli(capsys, "--model", ckpt, "--prompt", "x", "--max-new-tokens", "4", "--stats")
    assert code == 0 and "sampling: greedy (temperature 0) (from generation_config.json)" in err


def test_echo_prints_the_prompt_first(capsys, orthrus_ckpt):
    code, plain, _ = run_cli(capsys, "--model", orthrus_ckpt, "--prompt", "def fib", "--max-new-tokens", "6")
    code2, echoed, _ = run_cli(capsys, "--model", orthrus_ckpt, "--prompt", "def fib", "--max-new-tokens", "6", "--echo")
    assert code == code2 == 0 and echoed == "def fib" + plain


def test_prompt_file_gives_one_json_line_per_prompt_equal_to_each_alone(capsys, tmp_path, orthrus_ckpt):
    lines = [{"id": "a", "prompt": "def fibonacci(n):"}, {"prompt": "class Stack:", "max_new_tokens": 5},
             {"id": "c", "prompt": "Grüße", "chat": True, "enable_thinking": False}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    code, out, err = run_cli(capsys, "--model", orthrus_ckpt, "--prompt-file", tmp_path / "p.jsonl", "--batch-size", "2",
                             "--max-new-tokens", "12", "--block-size", "8")  # a fixed K: a histogram of 8
    assert code == 0 and "[orthrus] 3 prompts (batch size 2)" in err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in records] == ["a", "p.jsonl:2", "c"]
    assert [r["new_tokens"] for r in records] == [12, 5, 12]
    assert all(r["mode"] == "orthrus" and r["acceptance_mean"] >= 1 and len(r["acceptance_histogram"]) == 8 for r in records)
    for r, line in zip(records, lines):  # each row equals that prompt decoded alone
        args = ["--prompt", line["prompt"], "--max-new-tokens", str(line.get("max_new_tokens", 12))]
        args += ["--chat", "--no-thinking"] if line.get("chat") else []
        code, alone, _ = run_cli(capsys, "--model", orthrus_ckpt, *args)
        assert alone == r["text"] + "\n"


def test_prompt_file_from_stdin_to_an_output_file(tmp_path, orthrus_ckpt):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "orthrus_min.generate", "--model", str(orthrus_ckpt), "--prompt-file", "-",
                           "--output", str(tmp_path / "out.jsonl"), "--max-new-tokens", "4"],
                          input='{"id": "x", "prompt": "def f"}\n{"id": "y", "prompt": "import"}\n', capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["x", "y"]
    assert done.stdout == ""


def test_output_into_a_closed_pipe_ends_quietly(orthrus_ckpt):
    """`generate … | head -c 10`, through a real pipe: no traceback, the status of a process ended by SIGPIPE."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    command = (f"{sys.executable} -m orthrus_min.generate --model {orthrus_ckpt} --prompt 'def f' --max-new-tokens 400 "
               "--mode ar 2>err.txt | head -c 10; echo \"status ${PIPESTATUS[0]}\"")
    done = subprocess.run(["bash", "-c", command], capture_output=True, env=env, cwd=orthrus_ckpt.parent, timeout=120)
    err = (orthrus_ckpt.parent / "err.txt").read_text()
    assert "Traceback" not in err and "Error" not in err, err
    assert done.stdout.endswith(b"status 141\n") and len(done.stdout) == 10 + len(b"status 141\n")


def test_python_api_errors_are_one_line():
    from orthrus_min import OrthrusError, load

    llm = load(device="cpu")
    with pytest.raises(TypeError, match="prompt must be a str, a list of token ids, or a list of those"):
        llm.generate({"text": "x"})
    with pytest.raises(TypeError, match=r"messages\[0\] must be a dict with a str 'role' and a str 'content'"):
        llm.chat([{"role": "user"}])
    with pytest.raises(OrthrusError, match="token id 99999 is outside the model's vocabulary"):
        llm.generate([1, 99999])
    with pytest.raises(OrthrusError, match="mode 'fast' is unknown"):
        llm.generate("x", mode="fast")
    with pytest.raises(TypeError, match="temperature must be a number, got str"):
        llm.generate("x", temperature="hot")
    with pytest.raises(OrthrusError, match="the prompt is empty"):
        llm.generate([])
    with pytest.raises(OrthrusError, match="no such checkpoint folder"):
        load("/no/such/folder")


def test_backend_mlx_without_mlx_names_the_extra(capsys, orthrus_ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlx", None)  # `import mlx.core` now fails, as on a machine without MLX
    monkeypatch.setitem(sys.modules, "mlx.core", None)
    for name in [m for m in sys.modules if m.startswith("orthrus_min.mlx.")]:
        monkeypatch.delitem(sys.modules, name)
    code, out, err = run_cli(capsys, "--model", orthrus_ckpt, "--prompt", "x", "--backend", "mlx")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: ") and 'pip install "orthrus-min[mlx]"' in err


def test_every_flag_has_help_and_states_its_default_once(capsys):
    from orthrus_min.generate import build_parser

    parser = build_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, action.dest
        assert action.help.count("default:") <= 1, action.dest
        if action.default not in (None, False) and action.dest not in ("device", "dtype", "attn", "backend"):
            assert f"default: {action.default}" in action.help, action.dest
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "--max-new-tokens" in text


# --------------------------------------------------------------------------- plain-text prompts, bounded reading, --output


def test_prompt_text_file_is_read_verbatim(capsys, tmp_path, orthrus_ckpt):
    """--prompt-text-file keeps the trailing newlines that `--prompt "$(cat FILE)"` would strip; the same text given
    with --prompt decodes to the same output."""
    text = "def fibonacci(n):\n    \"\"\"Grüße\"\"\"\n\n"
    (tmp_path / "p.txt").write_bytes(text.encode())
    code, echoed, _ = run_cli(capsys, "--model", orthrus_ckpt, "--prompt-text-file", tmp_path / "p.txt", "--max-new-tokens", "5",
                              "--echo")
    code2, same, _ = run_cli(capsys, "--model", orthrus_ckpt, "--prompt", text, "--max-new-tokens", "5")
    assert code == code2 == 0 and echoed == text + same


def test_prompt_file_size_limits_name_the_cap(capsys, tmp_path, orthrus_ckpt, monkeypatch):
    import orthrus_min.prompts as prompts
    import orthrus_min.reading as reading

    monkeypatch.setattr(reading, "CHUNK", 16)  # small reads, so that the limits are passed within a few bytes
    monkeypatch.setattr(prompts, "MAX_LINE_BYTES", 64)
    monkeypatch.setattr(prompts, "MAX_FILE_BYTES", 200)
    (tmp_path / "long.jsonl").write_text('{"prompt": "a"}\n' + '{"prompt": "' + "b" * 60 + '"}\n')
    (tmp_path / "big.jsonl").write_text('{"prompt": "a"}\n' * 13)
    (tmp_path / "ok.jsonl").write_text('{"prompt": "' + "c" * 48 + '"}\n' + '{"prompt": "a"}\n' * 8)
    for name, message in (("long.jsonl", "long.jsonl: line 2 is longer than 6.10352e-05 MiB"),
                          ("big.jsonl", "big.jsonl: more than 0.000190735 MiB, the most that a prompt file may hold")):
        code, out, err = run_cli(capsys, "--model", orthrus_ckpt, "--prompt-file", tmp_path / name)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert len(prompts.read_prompt_file(tmp_path / "ok.jsonl")) == 9  # a 64-byte line and 200 bytes in all: just fit


def test_output_is_replaced_only_when_the_run_completes(capsys, tmp_path, orthrus_ckpt, monkeypatch):
    """--output is written under a temporary name and renamed at the end: an interrupted run leaves the old file as it
    was and no temporary file behind; a completed run replaces it. A symbolic link is not written through."""
    from orthrus_min.api import LLM

    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c"}\n')
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    real, calls = LLM.generate, []

    def interrupted_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LLM, "generate", interrupted_second_batch)
    args = ["--model", orthrus_ckpt, "--prompt-file", tmp_path / "p.jsonl", "--output", out, "--batch-size", "2",
            "--max-new-tokens", "3"]
    code, stdout, err = run_cli(capsys, *args)
    assert code == 130 and err == "interrupted\n" and stdout == ""
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "p.jsonl"]
    monkeypatch.setattr(LLM, "generate", real)
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0 and [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["p.jsonl:1", "p.jsonl:2", "p.jsonl:3"]
    link = tmp_path / "link.jsonl"
    link.symlink_to(out)
    before = out.read_text()
    code, stdout, err = run_cli(capsys, *[a if a != out else link for a in args])
    assert code == 2 and err.startswith(f"error: --output {link}: is a symbolic link, not a regular file")
    assert link.is_symlink() and out.read_text() == before


def test_prompt_file_chat_default_and_per_line_choice(capsys, tmp_path, orthrus_ckpt):
    """A line without "chat" follows --chat; "chat": false keeps that line raw; ids may be numbers."""
    (tmp_path / "p.jsonl").write_text('{"id": 7, "prompt": "hi", "system": "S"}\n{"id": 2.5, "prompt": "hi", "chat": false}\n')
    code, out, err = run_cli(capsys, "--model", orthrus_ckpt, "--prompt-file", tmp_path / "p.jsonl", "--chat", "--max-new-tokens", "3")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["id"] for r in records] == ["7", "2.5"]
    assert records[0]["prompt_tokens"] > 10 and records[1]["prompt_tokens"] < 3  # the chat template's tokens, or none


def test_threads_apply_to_torch(capsys, orthrus_ckpt):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code, out, err = run_cli(capsys, "--model", orthrus_ckpt, "--prompt", "x", "--max-new-tokens", "2", "--threads", "1")
        assert code == 0 and torch.get_num_threads() == 1 and "warning" not in err
    finally:
        torch.set_num_threads(before)
