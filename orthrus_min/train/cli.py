"""The command line of training: flags, value checks, and dispatch to the stages.

    python -m orthrus_min.train <stage> [flags]      # stages: tokenizer, pretrain, distill, regenerate, export, prompts
    python -m orthrus_min.train <stage> --help       # every flag, with its default

Every flag's help states its default once, as "(default: …)". Every user mistake — a bad flag
value, a bad data row, an output folder in the way, a resume that does not match its
checkpoint — and every fault of the environment or the run — a save that fails on a full disk or
a read-only folder, a loss that is no longer finite — prints one line `error: …` on stderr and
exits with status 2, without a traceback. Under torchrun only rank 0 prints it; every process
exits 2. `--overwrite` replaces only what the stage itself writes (files.py's rule).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..cli import EXIT_USAGE, command_parser, int_list, nonnegative_int, number, positive_float, positive_int, run_main
from ..errors import OrthrusError


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    return number(text, float, lambda v: 0 <= v <= 1, "a fraction in [0, 1]")


def decay(text: str) -> float:
    """A number in (0, 1]."""
    return number(text, float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def percent(text: str) -> float:
    """A percentage in (0, 100)."""
    return number(text, float, lambda v: 0 < v < 100, "a percentage in (0, 100)")


def warmup(text: str) -> int | str:
    """Warm-up steps: an integer >= 0, or a share of the steps such as 5%."""
    if text.endswith("%"):
        number(text[:-1], float, lambda v: 0 <= v <= 100, "a percentage in [0, 100]")
        return text
    return nonnegative_int(text)


def vocab_size(text: str) -> int:
    """A tokenizer size: at least the byte alphabet and the special tokens, at most bpe.MAX_VOCAB_SIZE."""
    from .bpe import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE

    return number(text, int, lambda v: MIN_VOCAB_SIZE <= v <= MAX_VOCAB_SIZE,
                  f"an integer from {MIN_VOCAB_SIZE} (256 bytes + {MIN_VOCAB_SIZE - 256} special tokens) to {MAX_VOCAB_SIZE:,}")


def weight_list(text: str) -> list[float]:
    """'5,3,2' -> [5.0, 3.0, 2.0]: numbers >= 0, at least one > 0."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0 or max(values) <= 0 or max(values) == float("inf"):
        raise argparse.ArgumentTypeError(f"expected comma-separated weights >= 0, not all 0, got {text!r}")
    return values


# --------------------------------------------------------------------------- flags


def data_args(sp, with_mix: bool = True) -> None:
    """Where the documents come from, and how they are split and rendered."""
    sp.add_argument("--data", nargs="+", default=["stdlib"], metavar="SRC",
                    help="text files, folders (searched for --pattern), .jsonl files of {\"text\"} or {\"messages\"} rows, "
                         "or 'stdlib' (this Python's standard library) (default: stdlib)")
    sp.add_argument("--pattern", default="*.py", help="file pattern searched in folders (default: *.py)")
    sp.add_argument("--heldout-percent", type=percent, default=3.0,
                    help="percent of documents held out, split by a hash of each file or JSONL line (default: 3)")
    if with_mix:
        sp.add_argument("--mix", type=weight_list, default=None, metavar="W1,W2,…",
                        help="one weight per --data source: its share of each epoch's pieces (default: every piece once)")
        sp.add_argument("--no-thinking", action="store_true",
                        help="render chat rows with enable_thinking=False (Qwen3: an empty <think> block, as the published "
                             "recipe's responses were generated)")


def training_args(sp, steps: int, lr: float, warmup_default: int, batch_size: int) -> None:
    """The loop's flags that pretrain and distill share (defaults differ)."""
    g = sp.add_argument_group("optimisation")
    g.add_argument("--steps", type=positive_int, default=None, help=f"optimizer steps (default: {steps}, unless --epochs)")
    g.add_argument("--epochs", type=positive_float, default=None, help="train this many passes over the data instead of "
                                                                        "--steps (default: off)")
    g.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help=f"rows per forward on each process: the micro-batch (default: {batch_size})")
    g.add_argument("--global-batch", type=positive_int, default=None,
                   help="rows per optimizer step over all processes, a multiple of processes × --batch-size; the rest is "
                        "gradient accumulation (default: --batch-size × processes)")
    g.add_argument("--seq-len", type=positive_int, default=256, help="tokens per packed row (default: 256)")
    g.add_argument("--lr", type=positive_float, default=lr, help=f"peak learning rate of AdamW (default: {lr})")
    g.add_argument("--warmup", type=warmup, default=warmup_default,
                   help=f"linear warm-up: steps, or a share of the steps such as 5%% (default: {warmup_default})")
    g.add_argument("--final-lr-fraction", type=fraction, default=0.1,
                   help="the cosine decay ends at this fraction of --lr (default: 0.1)")
    g.add_argument("--clip", type=positive_float, default=1.0, help="gradient-norm clipping (default: 1.0)")
    g.add_argument("--seed", type=int, default=0, help="seed of the data order, anchors and initialisation (default: 0)")
    r = sp.add_argument_group("run")
    r.add_argument("--eval-every", type=positive_int, default=100, help="evaluate every N steps and at the end (default: 100)")
    r.add_argument("--save-every", type=positive_int, default=50, help="checkpoint every N steps and at the end (default: 50)")
    r.add_argument("--minutes", type=positive_float, default=None,
                   help="stop cleanly (with a checkpoint) after this many minutes; continue with --resume (default: no limit)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    r.add_argument("--overwrite", action="store_true", help="replace a previous run's outputs in --out (its token cache "
                                                           "in --out/data is kept)")
    r.add_argument("--device", default="auto", help="cpu, cuda, or auto; under torchrun each process takes cuda:LOCAL_RANK "
                                                    "(default: auto)")
    r.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each layer in the backward pass: less memory, about one more forward of time")
    r.add_argument("--log-interval", type=positive_float, default=30.0,
                   help="seconds between progress lines when stderr is not a terminal (default: 30)")
    r.add_argument("--dry-run", type=positive_int, nargs="?", const=0, default=None, metavar="PROCESSES",
                   help="print the plan — parameters, data, tokens per step, steps, memory per GPU, launch command — for "
                        "PROCESSES processes (default: this launch's), tokenize the data, and stop")


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m orthrus_min.train`, one sub-command per stage."""
    from . import __doc__ as package_doc
    from .pretrain import MODEL_PRESETS

    p, sub = command_parser("python -m orthrus_min.train", package_doc, "stage")

    help_ = "stage 1: train a byte-level BPE tokenizer on the corpus"
    tok = sub.add_parser("tokenizer", help=help_, description=help_)
    data_args(tok, with_mix=False)
    tok.add_argument("--vocab-size", type=vocab_size, default=4096,
                     help="tokens in the vocabulary, 260 … 1,048,576; a small corpus may give fewer (default: 4096)")
    tok.add_argument("--out", type=Path, required=True, help="folder for tokenizer.json and tokenizer_config.json")
    tok.add_argument("--overwrite", action="store_true", help="replace tokenizer.json and tokenizer_config.json in a "
                                                             "non-empty --out (other files stay)")

    help_ = "stage 2: pretrain a small Qwen3 base from scratch (next-token cross-entropy)"
    pre = sub.add_parser("pretrain", help=help_, description=help_)
    data_args(pre)
    pre.add_argument("--tokenizer", type=Path, required=True, help="folder with tokenizer.json (stage 1's --out)")
    pre.add_argument("--out", type=Path, required=True, help="folder for the model, log.jsonl and checkpoints/")
    pre.add_argument("--preset", choices=list(MODEL_PRESETS), default="tiny", help="model shape (default: tiny)")
    pre.add_argument("--init", default=None, metavar="MODEL",
                     help="continue pretraining this checkpoint (a folder) instead of starting from random weights: its "
                          "shape replaces --preset, an Orthrus checkpoint's diffusion view is dropped (default: off)")
    pre.add_argument("--context", type=positive_int, default=None, metavar="N",
                     help="max_position_embeddings of the model written, e.g. 4096 to train on long windows (default: "
                          "the preset's or --init's)")
    training_args(pre, steps=3000, lr=2e-3, warmup_default=100, batch_size=16)

    help_ = "stage 3: train the diffusion view of any Qwen3 by KL to its frozen AR view (the paper's recipe)"
    dis = sub.add_parser("distill", help=help_, description=help_)
    data_args(dis)
    dis.add_argument("--model", required=True, help="base Qwen3 or Orthrus checkpoint: a folder or a Hub id such as "
                                                    "Qwen/Qwen3-1.7B, loaded as generate loads it, tokenizer included")
    dis.add_argument("--out", type=Path, required=True, help="folder for the Orthrus model, log.jsonl and checkpoints/")
    o = dis.add_argument_group("Orthrus")
    o.add_argument("--block-size", type=positive_int, default=None,
                   help="K, tokens per draft block, stored as the checkpoint's block_size (default: the checkpoint's, or 16 "
                        "for a base model; the paper: 32)")
    o.add_argument("--train-block-sizes", type=int_list(1), default=None, metavar="K1,K2,…",
                   help="draw each step's block size from these (each 2 … --block-size), so that the view drafts well at "
                        "each (default: --block-size only)")
    o.add_argument("--mask-token-id", type=int, default=None,
                   help="the [MASK] id (default: the tokenizer's <|mask|>, else the first embedding row past the tokenizer's "
                        "ids, e.g. 151669 for Qwen3; recorded in config.json)")
    o.add_argument("--diffusion-init", default=None, metavar="MODEL",
                   help="start the diffusion view from this Orthrus checkpoint's (same shapes) instead of copies of the AR "
                        "view; its block_size and mask_token_id apply (default: off)")
    o.add_argument("--blocks-per-row", type=positive_int, default=None,
                   help="random anchor blocks per packed row (default: --seq-len // K)")
    o.add_argument("--loss", choices=("kl", "ce"), default="kl",
                   help="KL to the AR view (the paper) or cross-entropy to the data tokens (default: kl)")
    o.add_argument("--position-decay", type=decay, default=1.0,
                   help="weight block index i by this**i; 1 is the paper's uniform mean, < 1 favours the first drafts "
                        "(default: 1)")
    o.add_argument("--dtype", default="auto", help="storage dtype of the frozen base: float32, bfloat16, or auto (bfloat16 "
                                                   "on CUDA, float32 on CPU); the diffusion view always trains in fp32 "
                                                   "(default: auto)")
    training_args(dis, steps=1000, lr=1e-3, warmup_default=50, batch_size=16)
    s = dis.add_argument_group("self-distillation and evaluation")
    s.add_argument("--self-distill", type=nonnegative_int, default=0, metavar="N",
                   help="also train on N of the base model's greedy continuations of --eval-prompt-len-token corpus windows "
                        "(for a plain-text corpus; chat data: use the regenerate stage) (default: 0)")
    s.add_argument("--self-distill-fraction", type=fraction, default=0.75,
                   help="share of each epoch's pieces from those sequences (default: 0.75)")
    s.add_argument("--self-distill-batch", type=positive_int, default=64,
                   help="sequences generated at once for --self-distill (default: 64)")
    s.add_argument("--eval-prompts", type=nonnegative_int, default=8,
                   help="held-out prompts for the acceptance-length evaluation; 0 = none (default: 8)")
    s.add_argument("--eval-prompt-len", type=positive_int, default=64,
                   help="tokens per held-out text prompt (chat data: each conversation's own prompt) (default: 64)")
    s.add_argument("--eval-new-tokens", type=positive_int, default=64,
                   help="tokens decoded per prompt in the evaluation (default: 64)")

    help_ = "self-distillation data: the frozen base model's greedy responses to prompts, as distill --data rows"
    reg = sub.add_parser("regenerate", help=help_, description=help_)
    reg.add_argument("--model", required=True, help="the base model: a folder or a Hub id, as for generate")
    reg.add_argument("--data", nargs="+", required=True, metavar="FILE",
                     help=".jsonl files of {\"messages\": […]} rows (trailing assistant turns are regenerated) or "
                          "{\"prompt\": \"…\"} rows (continued as raw text); an \"id\" field names a row")
    reg.add_argument("--out", type=Path, required=True, help="the .jsonl file to write")
    reg.add_argument("--max-new-tokens", type=positive_int, default=2048,
                     help="most tokens per response (default: 2048, the published recipe)")
    reg.add_argument("--batch-size", type=positive_int, default=32, help="prompts decoded together (default: 32)")
    reg.add_argument("--no-thinking", action="store_true",
                     help="render chats with enable_thinking=False (Qwen3: no reasoning; the published recipe)")
    reg.add_argument("--resume", action="store_true", help="keep the responses already in --out and add the missing ones")
    reg.add_argument("--overwrite", action="store_true", help="discard an existing --out (a regular file) and start again")
    reg.add_argument("--device", default="auto", help="cpu, cuda, or auto; under torchrun each process takes "
                                                      "cuda:LOCAL_RANK (default: auto)")
    reg.add_argument("--dtype", default="auto", help="float32, bfloat16, or auto: bfloat16 on CUDA, float32 on CPU "
                                                     "(default: auto)")
    reg.add_argument("--attn", default="auto", choices=("auto", "torch", "triton"),
                     help="attention backend, as for generate (default: auto)")
    reg.add_argument("--log-interval", type=positive_float, default=30.0,
                     help="seconds between progress lines when stderr is not a terminal (default: 30)")

    help_ = "write a trained checkpoint for shipping: weights in --dtype, config, tokenizer"
    ex = sub.add_parser("export", help=help_, description=help_)
    ex.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    ex.add_argument("--out", type=Path, required=True, help="folder to write")
    ex.add_argument("--dtype", default="bfloat16", help="storage dtype of the weights; bfloat16 halves the size "
                                                        "(default: bfloat16)")
    ex.add_argument("--overwrite", action="store_true", help="replace config.json, the weights and the tokenizer files in "
                                                            "a non-empty --out (other files stay)")

    help_ = "held-out loss of a model (nats per token) on the first held-out rows, as pretrain evaluates it"
    ev = sub.add_parser("evaluate", help=help_, description=help_)
    data_args(ev, with_mix=False)
    ev.add_argument("--model", required=True, help="checkpoint folder or Hub id (its tokenizer reads the data)")
    ev.add_argument("--seq-len", type=positive_int, nargs="+", default=[256], metavar="N",
                    help="tokens per row; several give one loss each (default: 256)")
    ev.add_argument("--rows", type=positive_int, default=32, help="held-out rows per length (default: 32, as pretrain)")

    help_ = "write held-out prompts (JSONL: {\"id\", \"prompt\"} per line) for evaluation and benchmarks"
    pr = sub.add_parser("prompts", help=help_, description=help_)
    data_args(pr, with_mix=False)
    pr.add_argument("--count", type=positive_int, default=16, help="prompts to write (default: 16)")
    pr.add_argument("--lines", type=positive_int, default=12, help="lines of code per prompt (default: 12)")
    pr.add_argument("--out", type=Path, required=True, help="the .jsonl file to write")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --out (a regular file)")
    return p


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Runs one stage; returns the exit status (0; 2 for a user mistake; 130 when interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_main(lambda: run_stage(argv))


def run_stage(argv: list[str]) -> int:
    """Parses the command line and runs the stage; under torchrun only rank 0 reports a mistake (all exit 2)."""
    from .dist import launched_by_torchrun, setup
    from .regenerate import regenerate
    from .stages import run_distill, run_evaluate, run_export, run_pretrain, run_prompts, run_tokenizer

    quiet = launched_by_torchrun() and os.environ.get("RANK", "0") != "0"
    dist = None
    try:
        args = build_parser().parse_args(argv)
        if args.command in ("pretrain", "distill", "regenerate"):  # the stages that may run on several processes
            dist = setup(args.device)
            if args.command == "regenerate":
                regenerate(args, dist)
            else:
                (run_pretrain if args.command == "pretrain" else run_distill)(args, dist, argv)
        else:
            {"tokenizer": run_tokenizer, "export": run_export, "prompts": run_prompts,
             "evaluate": run_evaluate}[args.command](args)
    except OrthrusError:
        if quiet:
            return EXIT_USAGE
        raise
    finally:
        if dist is not None:
            dist.close()
    return 0


__all__ = ["main", "run_stage", "build_parser"]
