"""The stages, wired: check everything cheap first, then data, then the model, then the loop.

Order inside `pretrain` and `distill`, so that a mistake costs seconds, not a model load:
  1. the `--out` rules (resume / overwrite / refuse) and, on a resume, the checkpoint's identity
     against this command (model, data, block size, mask token, sequence length, seed must match;
     anything else that changed is printed and applies from the resumed step);
  2. `--dry-run`: the plan, then stop;
  3. the data (tokenized by rank 0 into the keyed cache, read by every process);
  4. the model, the job, the loop; rank 0 writes the final model and its tokenizer to `--out`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_model, resolve_checkpoint, resolve_dtype
from ..config import Qwen3Config
from ..errors import OrthrusError
from ..model import init_diffusion_view
from .checkpoint import (MODEL_OUTPUTS, TOKENIZER_OUTPUTS, check_out_folder, check_writable, clear_run_outputs,
                         load_state)
from .corpus import end_of_text_id
from .data import (describe_sources, load, model_fingerprint, self_distill_docs, self_distill_key, training_pools)
from .dist import Dist
from .distill import DistillJob, blocks_for, choose_mask_token, copy_diffusion_view, freeze_base, train_token_stream
from .evaluate import eval_prompts
from .loop import LoopConfig, Trainer, write_final_model
from .objective import enable_activation_checkpointing
from .packing import Pool, RowStream
from .plan import launch_command, memory_estimate, parameter_counts, print_plan
from .pretrain import MODEL_PRESETS, PretrainJob, continued_base_model, new_base_model

IDENTITY_FLAGS = {  # identity field -> what the user changed
    "stage": "the stage", "model": "--model (its config.json or weight files)", "tokenizer": "--tokenizer",
    "data": "--data (a file's content, --pattern, --heldout-percent or --no-thinking)", "block_size": "--block-size",
    "mask_token_id": "--mask-token-id", "seq_len": "--seq-len", "seed": "--seed", "preset": "--preset",
    "self_distill": "--self-distill / --eval-prompt-len", "init": "--init (its config.json or weight files)",
    "context": "--context", "diffusion_init": "--diffusion-init (its config.json or weight files)",
}
QUIET_SETTINGS = ("minutes", "log_interval", "dry_run", "resume", "overwrite")


def say(dist: Dist, message: str) -> None:
    """An informational line on stderr, from rank 0 only."""
    if dist.is_main:
        print(message, file=sys.stderr, flush=True)


def settings_of(args) -> dict:
    """The command's settings that may change between a run and its resume (recorded in checkpoints)."""
    keep = ("steps", "epochs", "lr", "warmup", "final_lr_fraction", "clip", "batch_size", "global_batch", "mix", "loss",
            "position_decay", "train_block_sizes", "blocks_per_row", "self_distill_fraction", "eval_every", "save_every",
            "eval_prompts", "eval_prompt_len", "eval_new_tokens", "activation_checkpointing", "dtype")
    return {k: getattr(args, k) for k in keep if hasattr(args, k)}


def _short(value):
    """Digests shortened to 12 hex digits, for messages."""
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + "…"
    if isinstance(value, list):
        return [_short(v) for v in value]
    return value


def check_resume(folder: Path, identity: dict, settings: dict, dist: Dist) -> None:
    """Refuses a resume whose identity differs from the checkpoint's; reports the settings that changed."""
    state = load_state(folder)
    saved = state.get("identity", {})
    for key, value in identity.items():
        if saved.get(key) != value:
            if key == "stage":
                raise OrthrusError(f"--resume: {folder} is a {saved.get('stage')} checkpoint, not {value}")
            raise OrthrusError(f"--resume: {IDENTITY_FLAGS.get(key, key)} differs from the run in {folder.parent.parent} "
                               f"(checkpoint: {_short(saved.get(key))!r}, now: {_short(value)!r}); resume with the same "
                               "value, or start a new --out")
    before = state.get("settings", {})
    changed = [f"--{k.replace('_', '-')} {before.get(k)} -> {v}" for k, v in settings.items()
               if k in before and before[k] != v and k not in QUIET_SETTINGS]
    if changed:
        say(dist, f"resume: changed since the checkpoint, applied from step {state['step']}: {', '.join(changed)}")


def resolve_steps(args, stream: RowStream, global_batch: int, default: int) -> int:
    """--steps, or --epochs converted with the rows of the first epoch, or the stage's default."""
    if args.epochs is not None:
        return max(1, math.ceil(args.epochs * len(stream.plan(0)) / global_batch))
    return args.steps if args.steps is not None else default


def warmup_steps(warmup, steps: int) -> int:
    """--warmup as steps: an integer, or a share of the steps ("5%")."""
    if isinstance(warmup, str) and warmup.endswith("%"):
        return max(1, round(steps * float(warmup[:-1]) / 100))
    return int(warmup)


def check_global_batch(args, dist: Dist) -> int:
    """The global batch (default: --batch-size on every process), divisible by processes × --batch-size."""
    if args.steps is not None and args.epochs is not None:
        raise OrthrusError("--steps and --epochs both set the length of the run: give one")
    processes = args.dry_run or dist.world  # --dry-run N plans for N processes
    G = args.global_batch or args.batch_size * processes
    if G % (processes * args.batch_size):
        raise OrthrusError(f"--global-batch {G} is not divisible by processes × --batch-size = {processes} × {args.batch_size}")
    return G


def prepare_out(args, dist: Dist) -> None:
    """Rank 0 applies --overwrite (not on a dry run, which writes only the data cache) and checks that --out is
    writable; every process waits."""
    if dist.is_main:
        if args.overwrite and args.dry_run is None and Path(args.out).is_dir():
            clear_run_outputs(Path(args.out))
        check_writable(Path(args.out))
    dist.barrier()


def check_seq_len(seq_len: int, context: int, what: str) -> None:
    """--seq-len must fit the model's context (its RoPE table and the rows' memory are sized by it)."""
    if seq_len > context:
        raise OrthrusError(f"--seq-len {seq_len:,} is longer than {what}'s context of {context:,} tokens "
                           "(max_position_embeddings); give at most that")


def resolve_model_folder(name: str, dist: Dist) -> Path:
    """A --model folder or Hub id, as `generate` resolves it; rank 0 downloads, the others read the cache."""
    folder = resolve_checkpoint(name) if dist.is_main else None
    dist.barrier()
    return folder if folder is not None else resolve_checkpoint(name)


def loop_config(args, steps: int, global_batch: int, weight_decay: float) -> LoopConfig:
    return LoopConfig(out=Path(args.out), steps=steps, global_batch=global_batch, micro_batch=args.batch_size, lr=args.lr,
                      warmup=warmup_steps(args.warmup, steps), final_lr_fraction=args.final_lr_fraction, clip=args.clip,
                      weight_decay=weight_decay, eval_every=args.eval_every, save_every=args.save_every, minutes=args.minutes,
                      log_interval=args.log_interval, settings=settings_of(args))


def dry_run(args, argv: list[str], dist: Dist, config: Qwen3Config, trainable: int, frozen_bytes: int, data, stream,
            global_batch: int, steps: int, diffusion_tokens: int, act_bytes: int, stage: str) -> None:
    """Prints the plan (`plan.py`) for args.dry_run processes (0: this launch's world size)."""
    processes = args.dry_run or dist.world
    G, m = global_batch, args.batch_size
    total = parameter_counts(config)[0]
    plan0 = stream.plan(0)
    real_tokens = int(sum(int(p[3] - p[2]) for p in plan0.pieces))
    mem = memory_estimate(config, total - trainable, trainable, frozen_bytes, m, args.seq_len, diffusion_tokens, processes,
                          args.activation_checkpointing, act_bytes)
    train_docs = sum(len(t.train) for t in data.tokenized)
    train_tokens = sum(t.train.num_tokens for t in data.tokenized)
    lines = [
        ("stage", stage),
        ("parameters", f"{total:,} in all: {total - trainable:,} frozen, {trainable:,} trainable ({100 * trainable / total:.1f}%)"),
        ("data", f"{len(data.sources)} source(s): {train_docs:,} training documents, {train_tokens:,} tokens; held out: "
                 f"{sum(len(t.heldout) for t in data.tokenized):,} documents"),
        ("epoch", f"{len(plan0):,} rows of {args.seq_len:,} tokens ({real_tokens:,} real tokens, "
                  f"{100 * real_tokens / max(1, len(plan0) * args.seq_len):.1f}% of the row space)"),
        ("batch", f"global {G} rows = {processes} process(es) × micro-batch {m} × {G // (processes * m)} accumulation "
                  f"step(s); {G * args.seq_len:,} tokens per step"),
        ("steps", f"{steps:,} ({steps * G / max(1, len(plan0)):.2f} epochs), warm-up {warmup_steps(args.warmup, steps):,}"),
        ("memory per GPU", f"about {mem['total']:.1f} GiB: weights {mem['weights']:.1f}, optimizer and gradients "
                           f"{mem['optimizer']:.1f}, activations {mem['activations']:.1f} (micro-batch {m}"
                           f"{', activation checkpointing' if args.activation_checkpointing else ''})"),
        ("launch", launch_command(argv, processes)),
    ]
    if dist.is_main:
        print_plan(lines)


# --------------------------------------------------------------------------- pretrain


def run_pretrain(args, dist: Dist, argv: list[str]) -> None:
    """Stage 2: a small Qwen3 base from scratch."""
    from ..tokenizer import Tokenizer

    out = Path(args.out)
    resume_from = check_out_folder(out, args.resume, args.overwrite)
    tokenizer = Tokenizer(args.tokenizer)
    enable_thinking = False if args.no_thinking else None
    init = resolve_model_folder(args.init, dist) if args.init else None
    shape = Qwen3Config.from_json(init / "config.json") if init else Qwen3Config.from_dict(
        dict(model_type="qwen3", vocab_size=tokenizer.vocab_size, **MODEL_PRESETS[args.preset]))
    if init and shape.vocab_size < tokenizer.vocab_size:
        raise OrthrusError(f"--init {args.init}: its embedding has {shape.vocab_size:,} rows, fewer than the tokenizer's "
                           f"{tokenizer.vocab_size:,} tokens: pass the --tokenizer it was trained with")
    context = args.context or shape.max_position_embeddings
    check_seq_len(args.seq_len, context, f"--init {args.init}" if init else f"the {args.preset} preset")
    data = describe_sources(args.data, args.pattern, tokenizer, args.heldout_percent, enable_thinking, args.mix,
                            lambda m: say(dist, m))
    identity = {"stage": "pretrain", "tokenizer": data.tokenizer_hash, "data": data.keys, "preset": args.preset,
                "seq_len": args.seq_len, "seed": args.seed}
    if init:  # only when given, so that runs saved before these flags still resume
        identity.update(init=model_fingerprint(init), preset=None)
    if args.context:
        identity["context"] = args.context
    if resume_from is not None:
        check_resume(resume_from, identity, settings_of(args), dist)
    global_batch = check_global_batch(args, dist)
    prepare_out(args, dist)
    load(data, tokenizer, args.heldout_percent, enable_thinking, out / "data", dist, lambda m: say(dist, m))
    pools = training_pools(data, args.seq_len, args.mix)
    stream = RowStream(pools, args.seq_len, args.seed)
    steps = resolve_steps(args, stream, global_batch, default=3000)
    if args.dry_run is not None:
        config = replace(shape, model_type="qwen3", max_position_embeddings=context, block_size=None, mask_token_id=None)
        dry_run(args, argv, dist, config, parameter_counts(config)[0], 4, data, stream, global_batch, steps, 0,
                2 if dist.device.type == "cuda" else 4, "pretrain")
        return
    pad = end_of_text_id(tokenizer) or 0
    torch.manual_seed(args.seed)
    if init:
        model = continued_base_model(init, context).to(dist.device)
    else:
        model = new_base_model(tokenizer, args.preset, args.seed, context).to(dist.device)
    model.model.rotary_emb.build(dist.device)
    model.set_attn_backend("torch")
    if args.activation_checkpointing:
        enable_activation_checkpointing(model)
    origin = f"continued from {args.init}" if init else args.preset
    say(dist, f"model: {sum(p.numel() for p in model.parameters()):,} parameters ({origin}, context "
              f"{model.config.max_position_embeddings:,}); data: "
              f"{sum(t.train.num_tokens for t in data.tokenized):,} train tokens, "
              f"{sum(t.heldout.num_tokens for t in data.tokenized):,} held-out tokens")
    heldout = [Pool(t.source.spec, t.heldout) for t in data.tokenized if len(t.heldout)]
    job = PretrainJob(model, stream, heldout, pad, Path(args.tokenizer), identity, args.seed)
    Trainer(job, loop_config(args, steps, global_batch, weight_decay=0.1), stream, dist).run(resume_from)
    model.eval()
    if dist.is_main:
        write_final_model(model, out, Path(args.tokenizer))
        say(dist, f"saved base model to {out}")
    dist.barrier()


# --------------------------------------------------------------------------- distill


def diffusion_setup(args, config: Qwen3Config, tokenizer, donor: Qwen3Config | None = None) -> tuple[int, int, str]:
    """(block size K, mask token id, why that mask) for a base or an Orthrus checkpoint, the flags, and the
    checkpoint whose diffusion view starts this one (--diffusion-init)."""
    if donor is not None:
        if config.has_diffusion_view:
            raise OrthrusError("--diffusion-init: --model already has a diffusion view; drop one of the two")
        if not donor.has_diffusion_view:
            raise OrthrusError(f"--diffusion-init {args.diffusion_init}: it has no diffusion view (model_type 'qwen3')")
        shape = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")
        if any(getattr(donor, f) != getattr(config, f) for f in shape):
            raise OrthrusError(f"--diffusion-init {args.diffusion_init}: its layers differ from --model's ({', '.join(shape)})")
        config = donor
    if config.has_diffusion_view:
        if args.mask_token_id is not None and args.mask_token_id != config.mask_token_id:
            raise OrthrusError(f"--mask-token-id {args.mask_token_id}: this checkpoint's diffusion view was trained with "
                               f"mask_token_id {config.mask_token_id}; drop the flag")
        return args.block_size or config.block_size, config.mask_token_id, "the checkpoint's mask_token_id"
    mask, reason = choose_mask_token(tokenizer, config.vocab_size, args.mask_token_id)
    return args.block_size or 16, mask, reason


def run_distill(args, dist: Dist, argv: list[str]) -> None:
    """Stage 3: train the diffusion view of any Qwen3 (folder or Hub id) by KL to its frozen AR view."""
    from ..tokenizer import Tokenizer

    out = Path(args.out)
    resume_from = check_out_folder(out, args.resume, args.overwrite)
    folder = resolve_model_folder(args.model, dist)
    tokenizer = Tokenizer(folder)
    config = Qwen3Config.from_json(folder / "config.json")
    donor = resolve_model_folder(args.diffusion_init, dist) if args.diffusion_init else None
    K, mask_id, mask_reason = diffusion_setup(args, config, tokenizer,
                                              Qwen3Config.from_json(donor / "config.json") if donor else None)
    if K < 2:
        raise OrthrusError(f"--block-size {K}: a block of 1 token drafts nothing; use 2 or more")
    train_sizes = sorted(set(args.train_block_sizes or [K]))
    if not all(2 <= k <= K for k in train_sizes):
        raise OrthrusError(f"--train-block-sizes {','.join(map(str, train_sizes))}: each must lie in 2 … the block size {K}"
                           " (a block of 1 token drafts nothing)")
    if args.seq_len < K:
        raise OrthrusError(f"--seq-len {args.seq_len} is shorter than the block size {K}")
    check_seq_len(args.seq_len, config.max_position_embeddings, "the model")
    enable_thinking = False if args.no_thinking else None
    data = describe_sources(args.data, args.pattern, tokenizer, args.heldout_percent, enable_thinking, args.mix,
                            lambda m: say(dist, m))
    model_hash = model_fingerprint(folder)
    identity = {"stage": "distill", "model": model_hash, "data": data.keys, "block_size": K, "mask_token_id": mask_id,
                "seq_len": args.seq_len, "seed": args.seed,
                "self_distill": [args.self_distill, args.eval_prompt_len] if args.self_distill else None}
    if donor:  # only when given, so that runs saved before this flag still resume
        identity["diffusion_init"] = model_fingerprint(donor)
    if resume_from is not None:
        check_resume(resume_from, identity, settings_of(args), dist)
    base_dtype = resolve_dtype(args.dtype, dist.device)
    use_autocast = dist.device.type == "cuda" or base_dtype == torch.bfloat16
    global_batch = check_global_batch(args, dist)
    prepare_out(args, dist)
    load(data, tokenizer, args.heldout_percent, enable_thinking, out / "data", dist, lambda m: say(dist, m))

    if args.dry_run is not None:
        pools = training_pools(data, args.seq_len, args.mix)
        stream = RowStream(pools, args.seq_len, args.seed)
        steps = resolve_steps(args, stream, global_batch, default=1000)
        orthrus = config if config.has_diffusion_view else replace(config, model_type="orthrus", block_size=K,
                                                                      mask_token_id=mask_id)
        trainable = parameter_counts(orthrus)[1]
        k_max = max(train_sizes)
        dry_run(args, argv, dist, orthrus, trainable, base_dtype.itemsize, data, stream, global_batch, steps,
                blocks_for(args.seq_len, k_max, args.blocks_per_row) * k_max, 2 if use_autocast else 4, "distill")
        return

    model = load_model(folder, dtype=base_dtype, device=dist.device, attn="torch")
    if not model.config.has_diffusion_view:
        init_diffusion_view(model, K, mask_token_id=mask_id)
        if donor:
            copied = copy_diffusion_view(model, donor)
            say(dist, f"diffusion view: {copied} tensors from {args.diffusion_init} (--diffusion-init)")
    elif K != model.config.block_size:
        model.config = replace(model.config, block_size=K)
    say(dist, f"mask token: id {mask_id} ({mask_reason}); recorded in config.json as mask_token_id")
    params, trainable, total = freeze_base(model)
    for p in params:  # fp32 master weights for what trains, whatever the frozen base is stored in
        p.data = p.data.float()
    say(dist, f"trainable: {trainable:,} of {total:,} parameters ({100 * trainable / total:.1f}%, the diffusion view)")
    if args.activation_checkpointing:
        enable_activation_checkpointing(model)

    extra = None
    if args.self_distill:
        base_pools = training_pools(data, args.seq_len, args.mix)
        key = self_distill_key(model_hash, data.keys, args.self_distill, args.eval_prompt_len, args.seq_len, args.seed)

        def make():
            from .progress import Progress
            from .regenerate import self_distillation_data

            model.eval()
            bar = Progress(args.self_distill, 0, "self-distillation data", enabled=dist.is_main, interval=args.log_interval)
            rng = np.random.default_rng([args.seed, 5])
            seqs = self_distillation_data(model, train_token_stream(base_pools), args.self_distill, args.eval_prompt_len,
                                          args.seq_len, rng, args.self_distill_batch, progress=bar.update)
            bar.close()
            return seqs

        extra = self_distill_docs(out / "data" / f"self-distill-{key[:16]}.npy", make, dist)
    pools = training_pools(data, args.seq_len, args.mix, extra, args.self_distill_fraction)
    stream = RowStream(pools, args.seq_len, args.seed)
    steps = resolve_steps(args, stream, global_batch, default=1000)
    max_prompt = model.config.max_position_embeddings - args.eval_new_tokens - K - 1
    prompts = eval_prompts(data.heldout, args.eval_prompts, args.eval_prompt_len, max_prompt)
    say(dist, f"data: {sum(t.train.num_tokens for t in data.tokenized):,} train tokens in {len(pools)} pool(s); "
              f"{len(stream.plan(0)):,} rows per epoch; {len(prompts)} held-out prompts for the acceptance length")
    pad = end_of_text_id(tokenizer) or 0
    job = DistillJob(model, params, stream, pad, folder, identity, train_sizes=train_sizes, blocks_per_row=args.blocks_per_row,
                     loss=args.loss, position_decay=args.position_decay, seed=args.seed, prompts=prompts,
                     eval_new_tokens=args.eval_new_tokens, use_autocast=use_autocast)
    Trainer(job, loop_config(args, steps, global_batch, weight_decay=0.0), stream, dist).run(resume_from)
    model.eval().requires_grad_(False)
    for p in params:  # the shipped model in one dtype: the base's
        p.data = p.data.to(base_dtype)
    if dist.is_main:
        write_final_model(model, out, folder)
        say(dist, f"saved Orthrus model to {out} (block size {K}, mask_token_id {mask_id})")
    dist.barrier()


# --------------------------------------------------------------------------- the small stages


def run_tokenizer(args) -> None:
    """Stage 1: a byte-level BPE tokenizer on the training files."""
    from .bpe import train_tokenizer
    from .sources import corpus_files, split_files

    check_out_folder(args.out, False, args.overwrite, TOKENIZER_OUTPUTS, can_resume=False)
    train_files, _ = split_files(corpus_files(args.data, args.pattern), args.heldout_percent)
    check_writable(args.out)
    size = train_tokenizer(train_files, args.vocab_size, args.out)
    fewer = f" (--vocab-size {args.vocab_size}: the corpus has no more merges)" if size < args.vocab_size else ""
    print(f"tokenizer with {size} tokens{fewer} trained on {len(train_files)} files -> {args.out}", file=sys.stderr)


def run_export(args) -> None:
    """A shipping copy of a checkpoint: weights in --dtype, config, tokenizer files."""
    from ..checkpoint import num_parameters

    check_out_folder(args.out, False, args.overwrite, MODEL_OUTPUTS, can_resume=False)
    folder = resolve_checkpoint(args.model)
    model = load_model(folder, dtype=args.dtype, device="cpu")
    check_writable(args.out)
    write_final_model(model, args.out, folder)
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file()) / 2**20
    print(f"exported {num_parameters(model):,} parameters ({args.dtype}) to {args.out}: {size:.1f} MiB", file=sys.stderr)


def run_evaluate(args) -> None:
    """The held-out loss of a model at each --seq-len, on the rows pretrain evaluates (its first held-out rows)."""
    import tempfile

    from ..tokenizer import Tokenizer
    from .pretrain import heldout_rows, loss_sums

    folder = resolve_checkpoint(args.model)
    tokenizer = Tokenizer(folder)
    config = Qwen3Config.from_json(folder / "config.json")
    for n in args.seq_len:
        check_seq_len(n, config.max_position_embeddings, "the model")
    data = describe_sources(args.data, args.pattern, tokenizer, args.heldout_percent, None, None,
                            lambda m: print(m, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix="orthrus-evaluate-") as cache:
        load(data, tokenizer, args.heldout_percent, None, Path(cache), Dist(), lambda m: None)
        heldout = [Pool(t.source.spec, t.heldout) for t in data.tokenized if len(t.heldout)]
    if not heldout:
        raise OrthrusError("--data: no document fell in the held-out split; raise --heldout-percent")
    model = load_model(folder, dtype=torch.float32, device="cpu", attn="torch").eval()
    pad = end_of_text_id(tokenizer) or 0
    for n in args.seq_len:
        rows = heldout_rows(heldout, n, pad, count=args.rows)
        total, count = loss_sums(model, rows)
        print(f"held-out loss {total / count:.4f} nats/token: {int(count):,} tokens in {len(rows)} rows of {n:,} "
              f"({args.model})")


def run_prompts(args) -> None:
    """Held-out prompts (JSONL) for evaluation and benchmarks; --out replaced atomically, only if it is a regular file."""
    import json

    from ..files import check_writable_file, is_regular_file, write_text_atomically
    from .heldout import make_prompts
    from .sources import corpus_files, split_files

    if is_regular_file(args.out) and not args.overwrite:
        raise OrthrusError(f"--out {args.out} exists: pass --overwrite to replace it")
    check_writable_file(args.out, "--out")
    _, heldout_files = split_files(corpus_files(args.data, args.pattern), args.heldout_percent)
    records = make_prompts(heldout_files, args.count, args.lines)
    write_text_atomically(args.out, "".join(json.dumps(r) + "\n" for r in records), "--out")
    print(f"wrote {len(records)} held-out prompts from {len(heldout_files)} files to {args.out}", file=sys.stderr)


__all__ = ["run_pretrain", "run_distill", "run_tokenizer", "run_export", "run_prompts", "run_evaluate", "warmup_steps", "check_resume"]
