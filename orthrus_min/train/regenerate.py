"""Self-distillation data: the frozen base model's own greedy responses, written as training rows.

    python -m orthrus_min.train regenerate --model Qwen/Qwen3-1.7B --data prompts.jsonl --out responses.jsonl \\
        --no-thinking --max-new-tokens 2048

Input rows are `{"messages": […]}` (a chat: trailing assistant turns are dropped and a new answer is
generated with the chat template's generation prompt) or `{"prompt": "…"}` (raw text, continued
as is); an optional "id" names a row (default: file:line). Output rows are ready for
`distill --data`: `{"id", "messages": [… + {"role": "assistant", "content": answer}]}` or
`{"id", "text": prompt + continuation}`, with "finish_reason" ("eos" or "length") and "new_tokens".

The prompts are decoded greedily (the recipe; `generate --temperature 0` gives the same tokens, with
the same end-of-turn ids: config.json's and generation_config.json's) in batches (`generate_ar`,
the engine's batched decoder: each row's tokens equal decoding that prompt alone), longest first. Each process appends finished rows to its
own part file (`OUT.part-RANK`) and flushes after every batch; a rerun with `--resume` skips every id
already written (in OUT or any part). At the end rank 0 merges everything into OUT, in input
order, atomically. Under torchrun, process r decodes every world-th pending prompt.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import OrthrusError
from ..files import WriteFailed, check_writable_file, io_reason, kind_of, remove_output, write_text_atomically
from ..model import Qwen3ForCausalLM
from ..reading import read_jsonl
from ..request import check_messages
from .chat import before_answer, generation_prompt


@torch.no_grad()
def greedy_continuations(model: Qwen3ForCausalLM, prompts: torch.Tensor, num_new: int) -> torch.Tensor:
    """The AR view's greedy continuations of prompts (B, P), batched over one cache -> (B, P + num_new)."""
    B, P = prompts.shape
    cache = model.new_cache(P + num_new, batch_size=B)
    token = model(prompts, cache, logits_to_keep=1).argmax(-1)  # (B, 1)
    out = [prompts, token]
    for _ in range(num_new - 1):
        token = model(token, cache).argmax(-1)  # (B, 1)
        out.append(token)
    return torch.cat(out, dim=1)


def self_distillation_data(model, tokens: np.ndarray, num_sequences: int, prompt_len: int, seq_len: int, rng,
                           batch_size: int = 64, progress=None) -> torch.Tensor:
    """Sequences of (corpus prompt + the base model's own greedy continuation): the text the drafter meets at decode time."""
    from .sources import random_windows

    chunks, made = [], 0
    while made < num_sequences:
        prompts = random_windows(tokens, batch_size, prompt_len, rng).to(model.device)  # (b, P)
        chunks.append(greedy_continuations(model, prompts, seq_len - prompt_len).cpu())
        made += batch_size
        if progress is not None:
            progress(min(made, num_sequences))
    return torch.cat(chunks)[:num_sequences]  # (S, seq_len)


# --------------------------------------------------------------------------- the regenerate stage


@dataclass
class Request:
    """One prompt to answer: its id, its place in the input, and its token ids."""

    id: str
    index: int
    prompt_ids: list[int]
    messages: list[dict] | None = None  # chat rows (without trailing assistant turns)
    prompt: str | None = None  # text rows


def read_requests(paths: list[Path], tokenizer, enable_thinking: bool | None) -> list[Request]:
    """The prompts of JSONL files ({"messages"} or {"prompt"} rows), tokenized; duplicate ids are an error."""
    requests, seen = [], {}
    for path in paths:
        if path.suffix != ".jsonl" or not path.is_file():
            raise OrthrusError(f"--data {path}: regenerate reads .jsonl files of {{\"messages\": …}} or {{\"prompt\": …}} rows")
        for number, row in read_jsonl(path):
            where = f"{path}:{number}"
            rid = row_id(row, where) if "id" in row else f"{path.name}:{number}"
            if rid in seen:
                raise OrthrusError(f"{where}: duplicate id {rid!r} (first at {seen[rid]})")
            seen[rid] = where
            if "messages" in row:
                messages = check_messages(row["messages"], where)
                ids = generation_prompt(tokenizer, messages, enable_thinking, where)
                requests.append(Request(rid, len(requests), ids, messages=before_answer(messages)))
            elif isinstance(row.get("prompt"), str) and row["prompt"]:
                requests.append(Request(rid, len(requests), tokenizer.encode(row["prompt"]), prompt=row["prompt"]))
            else:
                raise OrthrusError(f"{where}: expected {{\"messages\": […]}} or {{\"prompt\": \"…\"}}, got keys {sorted(row)}")
    if not requests:
        raise OrthrusError("--data: no prompts found")
    return requests


def row_id(row: dict, where: str) -> str:
    """A row's "id" as text: a string, or a number written as JSON writes it; anything else is an error."""
    rid = row["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int, float)):
        raise OrthrusError(f"{where}: \"id\" must be a string or a number, got {json.dumps(rid)[:40]}")
    return rid if isinstance(rid, str) else json.dumps(rid)


def part_files(out: Path) -> list[Path]:
    """The per-process part files of an output file (from this run or an interrupted one)."""
    return sorted(out.parent.glob(f"{out.name}.part-*")) if out.parent.is_dir() else []


def read_records(path: Path) -> list[dict]:
    """The records of an output or part file. Only a half-written last line (no newline: a killed run's) is ignored;
    any other line that is not a record is an error naming it — a resume never drops a line silently."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise OrthrusError(f"{path}: cannot read ({io_reason(e)})") from None
    lines = data.split(b"\n")
    if lines and not data.endswith(b"\n"):
        lines.pop()  # the last line is unfinished (or empty)
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if not (isinstance(record, dict) and isinstance(record.get("id"), str)):
            raise OrthrusError(f"{path}:{number}: not a record written by regenerate (a JSON object with a string \"id\"); "
                               "fix or delete the line, or start again with --overwrite")
        records.append(record)
    return records


def open_part(path: Path):
    """Opens a part file for appending, first cutting a half-written last line (a killed run's) so the next
    record starts on a line of its own."""
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    return open(path, "a", encoding="utf-8")


def response_record(request: Request, tokenizer, tokens: list[int], finish_reason: str) -> dict:
    """The output row of one answered request."""
    answer = tokens[:-1] if finish_reason == "eos" else tokens  # the stop token is the template's to add
    text = tokenizer.decode(answer)
    if request.messages is not None:
        body = {"messages": request.messages + [{"role": "assistant", "content": text}]}
    else:
        body = {"text": request.prompt + text}
    return {"id": request.id, **body, "finish_reason": finish_reason, "new_tokens": len(tokens)}


def check_output(out: Path, resume: bool, overwrite: bool) -> None:
    """The --out rules for a file: an existing output (or parts of one) needs --resume or --overwrite, and may only be
    a regular file (files.py's rule: never a folder, a device or a symbolic link)."""
    if resume and overwrite:
        raise OrthrusError("--resume and --overwrite contradict each other: pick one")
    if out.is_dir():
        raise OrthrusError(f"--out {out}: is a folder; give a .jsonl file name")
    for path in [out] + part_files(out):
        kind = kind_of(path)
        if kind not in (None, "a regular file"):
            raise OrthrusError(f"--out {out}: {path} is {kind}, not a file regenerate wrote; it is neither read nor "
                               "replaced: give another --out")
    exists = os.path.lexists(out) or part_files(out)
    if exists and not (resume or overwrite):
        raise OrthrusError(f"--out {out} exists: pass --resume to add the missing responses, or --overwrite to start again")
    if resume and not exists:
        raise OrthrusError(f"--resume: {out} does not exist yet; drop --resume to start")


def merge(out: Path, requests: list[Request]) -> int:
    """Writes every finished record into `out` in input order (atomically) and removes the part files; returns the count."""
    order = {r.id: r.index for r in requests}
    records = {}
    for path in ([out] if out.exists() else []) + part_files(out):
        for record in read_records(path):
            records[record["id"]] = record
    ranked = sorted(records.values(), key=lambda r: (order.get(r["id"], len(order)), str(r["id"])))
    write_text_atomically(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ranked), "--out")
    for path in part_files(out):
        remove_output(path)
    return len(ranked)


def regenerate(args, dist) -> None:
    """The stage: answer every prompt not yet answered with the base model's greedy decoding, then merge."""
    from ..ar import generate_ar
    from ..checkpoint import generation_defaults, load_model, resolve_checkpoint
    from ..tokenizer import Tokenizer
    from .progress import Progress

    out = Path(args.out)
    check_output(out, args.resume, args.overwrite)
    dist.barrier()  # every process has checked before any writes
    if dist.is_main:
        check_writable_file(out, "--out")
        if args.overwrite:
            for path in [out] + part_files(out):
                remove_output(path)
    if dist.is_main:
        folder = resolve_checkpoint(args.model)
    dist.barrier()
    folder = resolve_checkpoint(args.model)
    tokenizer = Tokenizer(folder)
    enable_thinking = False if args.no_thinking else None
    requests = read_requests([Path(p) for p in args.data], tokenizer, enable_thinking)
    done = {r["id"] for path in ([out] if out.exists() else []) + part_files(out) for r in read_records(path)}
    pending = [r for r in requests if r.id not in done]
    model = load_model(folder, dtype=args.dtype, device=dist.device, attn=None if args.attn == "auto" else args.attn)
    eos = sorted(set(model.config.eos_token_id) | set(generation_defaults(folder).get("eos_token_id", [])))  # as generate
    context = model.config.max_position_embeddings
    mine = pending[dist.rank :: dist.world]
    skipped = [r for r in mine if len(r.prompt_ids) >= context]
    mine = sorted((r for r in mine if len(r.prompt_ids) < context), key=lambda r: -len(r.prompt_ids))
    bar = Progress(len(mine), 0, f"regenerate (rank {dist.rank})" if dist.active else "regenerate", enabled=dist.is_main,
                   interval=args.log_interval)
    if dist.is_main:
        bar.write(f"{len(requests)} prompts, {len(done)} answered already, {len(pending)} to go"
                  + (f" on {dist.world} processes" if dist.active else ""))
    part_path = Path(f"{out}.part-{dist.rank}")
    try:
        with open_part(part_path) as part:
            for i in range(0, len(mine), args.batch_size):
                batch = mine[i : i + args.batch_size]
                budgets = [min(args.max_new_tokens, context - len(r.prompt_ids)) for r in batch]
                generations = generate_ar(model, [r.prompt_ids for r in batch], budgets, eos_token_id=eos)  # greedy
                for request, g in zip(batch, generations):
                    record = response_record(request, tokenizer, g.tokens, g.finish_reason)
                    part.write(json.dumps(record, ensure_ascii=False) + "\n")
                part.flush()
                os.fsync(part.fileno())
                bar.update(i + len(batch))
    except OSError as e:  # a full disk: what was flushed before stays, and --resume continues from it
        raise WriteFailed(f"--out {out}: cannot write {part_path.name} ({io_reason(e)}); the responses written so far are "
                           "kept: free space and rerun with --resume") from None
    bar.close()
    (too_long,) = dist.sum(len(skipped))
    dist.barrier()
    if dist.is_main:
        total = merge(out, requests)
        note = f"; {int(too_long)} prompts skipped: as long as the model's context" if too_long else ""
        print(f"wrote {total} responses to {out}{note}", file=sys.stderr, flush=True)


__all__ = ["greedy_continuations", "self_distillation_data", "Request", "read_requests", "response_record", "regenerate",
           "merge", "part_files", "read_records", "check_output"]
