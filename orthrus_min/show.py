"""Seeing acceptance: which committed tokens came from the diffusion view's draft, and which from the AR view.

Each Orthrus iteration commits one run of tokens (consensus.py): the drafts d_1 … d_n that the AR view
accepted, then one token of the AR view's own, the bonus. The engine reports the length of each run,
n + 1 (`Completion.acceptance`), so a run splits as: all but its last token are accepted drafts, its last
token is the bonus. The continuation's first token comes from the prefill (the AR view; nothing is drafted).

One run can break the rule: a row's final run, which the token budget or an EOS may cut before its bonus
(every token kept is then a draft). Run lengths cannot tell the two apart, so the final run's last token is
marked UNSURE — unless that run holds K tokens (K - 1 drafts and the bonus: nothing was cut).

    from orthrus_min import load
    from orthrus_min.show import completion_spans, html, plain
    llm = load()
    out = llm.generate("class Stack:", max_new_tokens=64)
    spans = completion_spans(llm.tokenizer, out)
    print(plain(spans))            # ⟦accepted drafts⟧⟨bonus⟩…; ansi(spans) colours them; html(spans) for a notebook

A token's text: byte-level BPE splits multi-byte characters across tokens; a character belongs to the token
that completes it (the tokenizer's `StreamDecoder`, fed one token at a time), so the spans' texts, joined,
are exactly the completion's text. `SpanStream` makes the same spans as the runs arrive, for streaming
(`python -m orthrus_min.generate --show-drafts`).
"""

from __future__ import annotations

import html as html_lib
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import OrthrusError

FIRST, DRAFT, BONUS, UNSURE = "first", "draft", "bonus", "unsure"  # the kinds of Span

PLAIN_MARKS = {DRAFT: ("⟦", "⟧"), BONUS: ("⟨", "⟩"), FIRST: ("⟨", "⟩"), UNSURE: ("⟪", "⟫")}  # kind -> (open, close)
ANSI_CODES = {DRAFT: "\033[30;42m", BONUS: "\033[30;43m", FIRST: "\033[30;43m", UNSURE: "\033[30;47m"}  # black on green/yellow/grey
ANSI_RESET = "\033[0m"
HTML_COLOURS = {DRAFT: "#b7e4b0", BONUS: "#ffd966", FIRST: "#ffd966", UNSURE: "#d9d9d9"}
MEANING = {DRAFT: "accepted draft tokens (the diffusion view's, checked by the AR view)",
           BONUS: "the AR view's own token (each iteration's bonus; the first token, from the prefill, too)",
           UNSURE: "the last token, when its iteration may have been cut by the token budget or EOS: a draft or the bonus"}


@dataclass(frozen=True)
class Span:
    """Consecutive committed tokens of one iteration and one kind, and their text."""

    text: str  # "" when the tokens print nothing (a special token such as EOS, or part of a character finished later)
    kind: str  # FIRST (the prefill's token), DRAFT, BONUS or UNSURE
    iteration: int  # 0: the prefill; 1, 2, …: the draft-verify iterations
    token_ids: tuple[int, ...]


class SpanStream:
    """Turns one row's committed runs into Spans as they arrive: `push` each run (the first holds the prefill's
    token), then `finish` once the row is done.

    The last token of each run is held back until the next run arrives (it was then the bonus) or the row ends
    (`finish`: the bonus if the run held K tokens, else UNSURE). Characters split across tokens are completed
    by the tokenizer's StreamDecoder.
    """

    def __init__(self, tokenizer):
        self.decoder = tokenizer.stream_decoder()  # skip_special_tokens, as the completion's text
        self.iteration = -1  # of the newest run
        self.held: tuple[int, str, int] | None = None  # (token id, its text, the length of its run)

    def push(self, run: Sequence[int]) -> list[Span]:
        """The spans settled by one more run of committed token ids: the previous run's last token, this run's drafts."""
        run = [int(t) for t in run]
        if not run:
            return []
        settled = self.release(FIRST if self.iteration == 0 else BONUS)
        self.iteration += 1
        texts = [self.decoder.push([t]) for t in run]  # one token at a time: each character goes to the token completing it
        if self.iteration == 0:  # the prefill commits one token; a longer first run is all the AR view's
            settled += [Span("".join(texts[:-1]), FIRST, 0, tuple(run[:-1]))] if len(run) > 1 else []
        elif len(run) > 1:
            settled.append(Span("".join(texts[:-1]), DRAFT, self.iteration, tuple(run[:-1])))
        self.held = (run[-1], texts[-1], len(run))
        return settled

    def finish(self, block_size: int | None = None) -> list[Span]:
        """The held last token, once the row is done: the bonus if its run had `block_size` (K) tokens, else UNSURE
        (the first token is always FIRST); with any text the decoder still held back."""
        if self.held is None:
            return []
        token, text, run_length = self.held
        kind = FIRST if self.iteration == 0 else BONUS if run_length == block_size else UNSURE
        self.held = None
        return [Span(text + self.decoder.flush(), kind, self.iteration, (token,))]

    def release(self, kind: str) -> list[Span]:
        """The held token as a Span of `kind` (a later run proved that its run was not cut)."""
        if self.held is None:
            return []
        token, text, _ = self.held
        self.held = None
        return [Span(text, kind, self.iteration, (token,))]


def spans(tokenizer, token_ids: Sequence[int], acceptance: Sequence[int], block_sizes: Sequence[int] | None = None) -> list[Span]:
    """The Spans of one continuation: token_ids (first the prefill's token, then each iteration's run), acceptance
    (tokens committed per iteration, summing to len(token_ids) - 1) and block_sizes (K of each iteration; without
    them the final run's last token is UNSURE). tokenizer: an orthrus_min Tokenizer (`llm.tokenizer`)."""
    token_ids, acceptance = list(token_ids), list(acceptance)
    if not token_ids:
        raise OrthrusError("there are no tokens to show")
    if any(not isinstance(n, int) or n < 1 for n in acceptance) or 1 + sum(acceptance) != len(token_ids):
        raise OrthrusError(f"acceptance must be run lengths >= 1 adding up to the {len(token_ids) - 1} tokens after "
                           f"the first, got {acceptance}")
    if block_sizes is not None and len(block_sizes) != len(acceptance):
        raise OrthrusError(f"block_sizes has {len(block_sizes)} entries for {len(acceptance)} iterations")
    stream = SpanStream(tokenizer)
    out, start = stream.push(token_ids[:1]), 1
    for n in acceptance:
        out += stream.push(token_ids[start : start + n])
        start += n
    return out + stream.finish(block_sizes[-1] if block_sizes and acceptance else None)


def completion_spans(tokenizer, completion) -> list[Span]:
    """The Spans of an Orthrus `Completion` (what `LLM.generate` returns), with its tokenizer (`llm.tokenizer`)."""
    if completion.mode != "orthrus":
        raise OrthrusError(f"the completion was decoded with mode {completion.mode!r}: it has no drafts to show")
    return spans(tokenizer, completion.token_ids, completion.acceptance, completion.block_sizes)


# --------------------------------------------------------------------------- renderings


def plain(spans: Sequence[Span]) -> str:
    """Text with markers: ⟦accepted drafts⟧, ⟨the AR view's token⟩ (bonus or first), ⟪unsure⟫; empty spans left out."""
    return "".join(PLAIN_MARKS[s.kind][0] + s.text + PLAIN_MARKS[s.kind][1] for s in spans if s.text)


def ansi(spans: Sequence[Span]) -> str:
    """Text coloured for a terminal: black on green (accepted drafts), yellow (the AR view's token), grey (unsure).
    Each line of a span is coloured on its own, so that no colour runs on to the end of a line (a span that is
    only a line break therefore shows no colour; `plain` marks it)."""
    return "".join("\n".join(ANSI_CODES[s.kind] + line + ANSI_RESET if line else "" for line in s.text.split("\n"))
                   for s in spans)


def legend(style: str) -> str:
    """One line that says what the markers (style "plain") or colours ("ansi") of the other renderings mean."""
    if style == "plain":
        names = {k: PLAIN_MARKS[k][0] + "…" + PLAIN_MARKS[k][1] for k in MEANING}
    elif style == "ansi":
        names = {DRAFT: "green", BONUS: "yellow", UNSURE: "grey"}
    else:
        raise OrthrusError(f"legend style {style!r} is unknown; choose 'plain' or 'ansi'")
    return "show-drafts: " + "; ".join(f"{names[k]} {MEANING[k]}" for k in MEANING)


def iteration_count(spans: Sequence[Span]) -> tuple[int, int]:
    """(draft-verify iterations, tokens they committed): τ, the acceptance length, is their ratio."""
    iterations = max((s.iteration for s in spans), default=0)
    return iterations, sum(len(s.token_ids) for s in spans if s.iteration > 0)


def html(spans: Sequence[Span], legend: bool = True) -> str:
    """An HTML fragment (for a notebook: IPython.display.HTML) of the text with each span on its colour; every
    iteration ends with a thin bar, and hovering a span names its iteration and kind. legend: a line above
    that explains the colours and gives τ."""
    style = "color:#000;border-radius:2px;padding:0 1px"
    parts = []
    for s in spans:
        if not s.text:
            continue
        end = ";border-right:2px solid #555" if s.kind != DRAFT else ""  # the iteration's last token
        title = html_lib.escape(f"iteration {s.iteration}: {len(s.token_ids)} token(s), {s.kind}", quote=True)
        parts.append(f'<span data-kind="{s.kind}" data-iteration="{s.iteration}" title="{title}" '
                     f'style="background:{HTML_COLOURS[s.kind]};{style}{end}">{html_lib.escape(s.text)}</span>')
    body = '<pre style="white-space:pre-wrap;line-height:1.6">' + "".join(parts) + "</pre>"
    if not legend:
        return body
    iterations, tokens = iteration_count(spans)
    tau = f"; {iterations} iterations committed {tokens} tokens: τ = {tokens / iterations:.2f}" if iterations else ""
    keys = " ".join(f'<span style="background:{HTML_COLOURS[k]};{style}">{html_lib.escape(MEANING[k])}</span>' for k in MEANING)
    return f'<div style="font-size:90%">{keys}{html_lib.escape(tau)}</div>' + body


__all__ = ["Span", "SpanStream", "spans", "completion_spans", "plain", "ansi", "html", "legend", "iteration_count",
           "FIRST", "DRAFT", "BONUS", "UNSURE"]
