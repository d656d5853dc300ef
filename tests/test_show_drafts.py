"""Seeing acceptance (orthrus_min/show.py, `generate --show-drafts`): which committed tokens are marked as accepted
drafts and which as the AR view's own token, checked against hand-made runs and against what the verifier decided."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import make_tokenizer_files
from orthrus_helpers import orthrus_checkpoint
from orthrus_min import OrthrusError, load
from orthrus_min.generate import main
from orthrus_min.show import (BONUS, DRAFT, FIRST, UNSURE, Span, SpanStream, ansi, completion_spans, html, legend, plain,
                              spans)
from orthrus_min.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
ANSI_CODE = re.compile(r"\033\[[0-9;]*m")
MARKS = re.compile("[⟦⟧⟨⟩⟪⟫]")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    folder = tmp_path_factory.mktemp("tok")
    make_tokenizer_files(folder)
    return Tokenizer(folder)


@pytest.fixture(scope="module")
def endless(tmp_path_factory):
    """An Orthrus checkpoint (block_size 8) with no EOS: every continuation runs to its budget."""
    return orthrus_checkpoint(tmp_path_factory.mktemp("endless"), eos_token_id=None)


@pytest.fixture(scope="module")
def llm(endless):
    return load(endless, device="cpu")


def kinds_and_ids(result: list[Span]) -> list[tuple[str, int, list[int]]]:
    return [(s.kind, s.iteration, list(s.token_ids)) for s in result]


# --------------------------------------------------------------------------- the split, on hand-made runs


def test_a_known_iteration_splits_into_drafts_then_the_bonus(tokenizer):
    ids = tokenizer.encode("def fibonacci(n):\n    a, b = 0, 1\n    return a")
    assert len(ids) >= 9
    tail = len(ids) - 1 - 3 - 1 - 2  # the final run: whatever is left after runs of 3, 1 and 2
    acceptance, K = [3, 1, 2, tail], [4, 4, 2, tail + 1]  # the final run is shorter than its K: maybe cut
    got = spans(tokenizer, ids, acceptance, K)
    assert kinds_and_ids(got) == [
        (FIRST, 0, ids[0:1]),  # the prefill's token
        (DRAFT, 1, ids[1:3]), (BONUS, 1, ids[3:4]),  # 3 committed: 2 accepted drafts, then the bonus
        (BONUS, 2, ids[4:5]),  # 1 committed: no draft accepted, the bonus alone
        (DRAFT, 3, ids[5:6]), (BONUS, 3, ids[6:7]),
        (DRAFT, 4, ids[7:-1]), (UNSURE, 4, ids[-1:]),  # the final run may have been cut before its bonus
    ]
    assert [s.text for s in got] == [tokenizer.decode(list(s.token_ids), skip_special_tokens=True) for s in got]
    assert "".join(s.text for s in got) == tokenizer.decode(ids)
    # A final run as long as its block cannot have been cut: its last token is the bonus.
    full = spans(tokenizer, ids, acceptance, [4, 4, 2, tail])
    assert kinds_and_ids(full)[-1] == (BONUS, 4, ids[-1:])
    # Only the prefill's token: no iteration.
    assert kinds_and_ids(spans(tokenizer, ids[:1], [])) == [(FIRST, 0, ids[:1])]


def test_the_three_renderings_of_a_known_iteration(tokenizer):
    ids = tokenizer.encode("a, b = 0, 1")
    texts = [tokenizer.decode([t]) for t in ids]
    got = spans(tokenizer, ids, [2, len(ids) - 3], [2, 8])
    assert plain(got) == f"⟨{texts[0]}⟩⟦{texts[1]}⟧⟨{texts[2]}⟩⟦{''.join(texts[3:-1])}⟧⟪{texts[-1]}⟫"
    lines = [Span("ab\ncd", DRAFT, 1, (7, 8)), Span("e", BONUS, 1, (9,)), Span("", BONUS, 2, (2,)), Span("\n", UNSURE, 3, (4,))]
    # Each line of a span coloured on its own (no colour runs to the end of a line); empty spans print nothing.
    assert ansi(lines) == "\033[30;42mab\033[0m\n\033[30;42mcd\033[0m\033[30;43me\033[0m\n"
    assert plain(lines) == "⟦ab\ncd⟧⟨e⟩⟪\n⟫"
    assert legend("plain").startswith("show-drafts: ⟦…⟧ accepted draft tokens") and "⟪…⟫" in legend("plain")
    assert "green accepted draft" in legend("ansi") and "yellow the AR view's own token" in legend("ansi")


class SpanParser(HTMLParser):
    """(kind, iteration, text) of every <span data-kind=…> of html()'s output."""

    def __init__(self):
        super().__init__()
        self.found, self.open = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and "data-kind" in attrs:
            self.open = [attrs["data-kind"], int(attrs["data-iteration"]), ""]

    def handle_data(self, data):
        if self.open is not None:
            self.open[2] += data

    def handle_endtag(self, tag):
        if tag == "span" and self.open is not None:
            self.found.append(tuple(self.open))
            self.open = None


def test_html_marks_each_span_and_escapes_the_text(tokenizer):
    given = [Span("x", FIRST, 0, (1,)), Span("if a<b & c", DRAFT, 1, (2, 3, 4)), Span(">", BONUS, 1, (5,)),
             Span("", BONUS, 2, (6,)), Span("\n", UNSURE, 3, (7,))]
    out = html(given)
    assert "a&lt;b &amp; c" in out and "<b" not in out.replace("<br", "")
    parser = SpanParser()
    parser.feed(out)
    assert parser.found == [("first", 0, "x"), ("draft", 1, "if a<b & c"), ("bonus", 1, ">"), ("unsure", 3, "\n")]
    assert "3 iterations committed 6 tokens: τ = 2.00" in out  # iterations 1-3 hold tokens 2…7
    assert html(given, legend=False).startswith("<pre") and "τ" not in html(given, legend=False)


def test_a_character_split_across_tokens_goes_whole_to_the_token_that_completes_it(tokenizer):
    text = "café 東京 🚀 Köln"
    ids = tokenizer.encode(text)
    # A boundary inside a character: a prefix of the tokens decodes to a cut-off UTF-8 sequence.
    cut = next(i for i in range(1, len(ids)) if tokenizer.decode(ids[:i]).endswith("\ufffd"))
    before = tokenizer.decode(ids[:cut]).rstrip("\ufffd")  # the complete characters before the split one
    assert cut > 1 and text.startswith(before)
    # Runs that end iteration 1 with its bonus inside the character, and start iteration 2 with the rest of it.
    got = spans(tokenizer, ids, [cut - 1, len(ids) - cut])
    assert kinds_and_ids(got)[1:3] == [(DRAFT, 1, ids[1 : cut - 1]), (BONUS, 1, ids[cut - 1 : cut])] or cut == 2
    assert "".join(s.text for s in got) == text and not any("\ufffd" in s.text for s in got)
    assert "".join(s.text for s in got if s.iteration < 2) == before  # the split character is not in iteration 1
    assert "".join(s.text for s in got if s.iteration == 2).startswith(text[len(before)])  # but whole in iteration 2


def test_the_stream_settles_each_run_when_the_next_one_arrives(tokenizer):
    ids = tokenizer.encode("a, b = 0, 1")
    stream = SpanStream(tokenizer)
    assert kinds_and_ids(stream.push(ids[:1])) == []  # held: the first token waits for the next run
    assert kinds_and_ids(stream.push(ids[1:4])) == [(FIRST, 0, ids[:1]), (DRAFT, 1, ids[1:3])]
    assert kinds_and_ids(stream.push(ids[4:5])) == [(BONUS, 1, ids[3:4])]
    assert kinds_and_ids(stream.finish(block_size=1)) == [(BONUS, 2, ids[4:5])]  # a run of K tokens: not cut
    assert stream.finish() == []


def test_bad_runs_are_one_line_errors(tokenizer, llm):
    ids = tokenizer.encode("a, b = 0, 1")
    with pytest.raises(OrthrusError, match=r"acceptance must be run lengths >= 1 adding up to the \d+ tokens after the first"):
        spans(tokenizer, ids, [1])
    with pytest.raises(OrthrusError, match="acceptance must be run lengths >= 1"):
        spans(tokenizer, ids[:3], [0, 2])
    with pytest.raises(OrthrusError, match="block_sizes has 1 entries for 2 iterations"):
        spans(tokenizer, ids[:3], [1, 1], [2])
    with pytest.raises(OrthrusError, match="decoded with mode 'ar': it has no drafts to show"):
        completion_spans(llm.tokenizer, llm.generate("def f", 3, mode="ar"))
    with pytest.raises(TypeError, match="on_tokens must be a function on_tokens"):
        llm.generate("def f", 3, on_tokens=5)


# --------------------------------------------------------------------------- against what the verifier decided


@pytest.mark.parametrize("block_size", [2, 4])
def test_marks_agree_with_the_verifiers_accepted_counts(llm, monkeypatch, block_size):
    """The drafts the AR view accepted (n of each step, recorded inside greedy_accept) are exactly the tokens marked
    DRAFT; the final run's last token is marked BONUS only when it truly was the bonus."""
    import orthrus_min.consensus as consensus

    accept, counts = consensus.greedy_accept, []

    def recording(draft, ar_logits):
        n, bonus = accept(draft, ar_logits)
        counts.append(int(n[0]))
        return n, bonus

    monkeypatch.setattr(consensus, "greedy_accept", recording)
    finals = set()
    for budget in range(4, 12):
        counts.clear()
        runs = []
        out = llm.generate("def fib", budget, block_size=block_size, on_tokens=lambda row, tokens: runs.append(tokens))
        assert len(counts) == len(out.acceptance) and runs[0] == out.token_ids[:1]
        got = completion_spans(llm.tokenizer, out)
        drafted = [len(s.token_ids) for s in got if s.kind == DRAFT]
        for i, (n, kept) in enumerate(zip(counts, out.acceptance)):
            assert runs[i + 1] == out.token_ids[1 + sum(out.acceptance[:i]) : 1 + sum(out.acceptance[: i + 1])]
            if i < len(counts) - 1:  # not the final run: never cut, so kept = n + 1
                assert kept == n + 1
        marks = [s.kind for s in got if s.iteration == len(counts)]
        last_was_bonus = out.acceptance[-1] == counts[-1] + 1  # the final run was not cut before its bonus
        assert marks[-1] == (BONUS if out.acceptance[-1] == block_size else UNSURE)
        assert marks[-1] != BONUS or last_was_bonus
        assert sum(drafted) + sum(s.kind in (BONUS, UNSURE) for s in got) == sum(out.acceptance)
        assert drafted == [min(n, kept - 1) for n, kept in zip(counts, out.acceptance) if min(n, kept - 1) > 0]
        finals.add("bonus" if last_was_bonus else "cut")
    assert finals == {"bonus", "cut"}  # both kinds of final run were seen: the test exercised both


# --------------------------------------------------------------------------- the command line


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_marks_the_same_spans_as_the_api(capsys, endless, llm):
    code, out, err = run_cli(capsys, "--model", endless, "--prompt", "def fib", "--max-new-tokens", 12, "--block-size", 4,
                             "--show-drafts")
    assert code == 0 and err.startswith(legend("plain") + "\n")
    completion = llm.generate("def fib", 12, block_size=4)
    assert out == plain(completion_spans(llm.tokenizer, completion)) + "\n"
    assert MARKS.sub("", out) == completion.text + "\n"


def test_cli_colours_a_terminal_unless_no_color(capsys, endless, monkeypatch):
    import orthrus_min.generate as generate

    monkeypatch.setattr(generate, "on_terminal", lambda stream: True)
    monkeypatch.delenv("NO_COLOR", raising=False)
    args = ("--model", endless, "--prompt", "def fib", "--max-new-tokens", 12, "--block-size", 4, "--show-drafts")
    code, coloured, err = run_cli(capsys, *args)
    assert code == 0 and err.startswith(legend("ansi") + "\n")
    assert "\033[30;43m" in coloured and "\033[0m" in coloured and not MARKS.search(coloured)
    monkeypatch.setenv("NO_COLOR", "1")
    code, marked, _ = run_cli(capsys, *args)
    assert code == 0 and ANSI_CODE.sub("", coloured) == MARKS.sub("", marked)


@pytest.mark.parametrize("extra, message", [
    (("--mode", "ar"), "error: --show-drafts applies to orthrus decoding (ar drafts nothing); drop it or use --mode orthrus\n"),
    (("--prompt-file", "PROMPTS"), "error: --show-drafts works with one --prompt, not with --prompt-file\n"),
])
def test_cli_refuses_show_drafts_where_nothing_is_drafted(capsys, tmp_path, endless, extra, message):
    (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n')
    prompt = () if "--prompt-file" in extra else ("--prompt", "x")
    extra = tuple(tmp_path / "p.jsonl" if a == "PROMPTS" else a for a in extra)
    code, out, err = run_cli(capsys, "--model", endless, *prompt, *extra, "--show-drafts")
    assert (code, out, err) == (2, "", message)


def test_show_drafts_into_a_closed_pipe_ends_quietly(endless):
    """`generate --show-drafts … | head -c 1`, through a real pipe: the status of a process ended by SIGPIPE."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = (f"{sys.executable} -m orthrus_min.generate --model {endless} --prompt 'def f' --max-new-tokens 400 "
               "--show-drafts 2>err.txt | head -c 1; echo \" status ${PIPESTATUS[0]}\"")
    done = subprocess.run(["bash", "-c", command], capture_output=True, env=env, cwd=endless.parent, timeout=120)
    err = (endless.parent / "err.txt").read_text()
    assert err == legend("plain") + "\n", err  # the legend, then nothing: no traceback, no error line
    assert done.stdout == b"\xe2 status 141\n"  # the first byte of a marker (⟨, ⟦ and ⟪ all begin with 0xE2)
