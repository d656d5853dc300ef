"""Training: a tokenizer, a tiny Qwen3 base, and the Orthrus diffusion view (paper §4, "Training").

    python -m orthrus_min.train tokenizer --out runs/tok                       # byte-level BPE on the corpus
    python -m orthrus_min.train pretrain  --tokenizer runs/tok --out runs/base # a tiny Qwen3 base, from scratch
    python -m orthrus_min.train distill   --model runs/base --out runs/orthrus # the diffusion view (KL to the AR view)

The default corpus (`--data stdlib`) is the Python standard library of the interpreter that
runs the command: present on every machine, so the whole recipe runs offline. Files are
split train / held-out by a hash of their path. Every stage checkpoints to `--out` and
continues from there with `--resume`; `--minutes` stops a stage cleanly after a time budget.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import OrthrusError
from .model import Qwen3Config, Qwen3ForCausalLM, num_parameters, save_model

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

MODEL_PRESETS = {
    # the shipped default model: ~5.7M parameters in the AR view, +1.2M in the diffusion view
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=64, max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=10000.0),
    # for tests: a model that trains in seconds
    "micro": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, max_position_embeddings=512, tie_word_embeddings=True, rope_theta=10000.0),
}


# --------------------------------------------------------------------------- data


def corpus_files(sources: list[str], pattern: str = "*.py") -> list[Path]:
    """Text files named by `sources`: files, folders (searched for `pattern`), or "stdlib" (this Python's standard library)."""
    files: list[Path] = []
    for src in sources:
        if src == "stdlib":
            root = Path(sysconfig.get_paths()["stdlib"])
            files += [f for f in sorted(root.rglob(pattern)) if not {"site-packages", "test", "tests"} & set(f.relative_to(root).parts)]
        elif Path(src).is_dir():
            files += sorted(Path(src).rglob(pattern))
        elif Path(src).is_file():
            files.append(Path(src))
        else:
            raise OrthrusError(f"--data {src}: no such file or folder")
    if not files:
        raise OrthrusError(f"no training files found in {sources} (pattern {pattern!r})")
    return files


def is_heldout(path: Path, percent: float) -> bool:
    """A stable train / held-out split by file: the hash of the file name and its parent folder."""
    key = f"{path.parent.name}/{path.name}".encode()
    return int(hashlib.sha1(key).hexdigest()[:8], 16) % 10_000 < percent * 100


def split_files(files: list[Path], heldout_percent: float) -> tuple[list[Path], list[Path]]:
    heldout = [f for f in files if is_heldout(f, heldout_percent)]
    train = [f for f in files if not is_heldout(f, heldout_percent)]
    if not train or not heldout:
        raise OrthrusError(f"the train / held-out split of {len(files)} files left one side empty; use more files")
    return train, heldout


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def tokenize_files(tokenizer, files: list[Path]) -> np.ndarray:
    """All files' tokens, each file followed by <|endoftext|>, as one uint16/uint32 array."""
    eot = tokenizer.token_to_id("<|endoftext|>")
    ids: list[int] = []
    texts = [read_text(f) for f in files]
    for enc in tokenizer.tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eot)
    dtype = np.uint16 if tokenizer.vocab_size <= 65535 else np.uint32
    return np.asarray(ids, dtype=dtype)


def load_corpus(tokenizer, sources: list[str], pattern: str, heldout_percent: float, cache_dir: Path | None = None):
    """(train tokens, held-out tokens, held-out files), tokenized once and cached as .npy in `cache_dir`."""
    train_files, heldout_files = split_files(corpus_files(sources, pattern), heldout_percent)
    if cache_dir is not None and (cache_dir / "train_tokens.npy").exists():
        return np.load(cache_dir / "train_tokens.npy"), np.load(cache_dir / "heldout_tokens.npy"), heldout_files
    train, heldout = tokenize_files(tokenizer, train_files), tokenize_files(tokenizer, heldout_files)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(cache_dir / "train_tokens.npy", train)
        np.save(cache_dir / "heldout_tokens.npy", heldout)
    return train, heldout, heldout_files


def random_windows(tokens: np.ndarray, batch_size: int, seq_len: int, rng: np.random.Generator) -> torch.Tensor:
    """`batch_size` random windows of `seq_len` tokens from the packed corpus -> (B, T) int64."""
    starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch_size)
    return torch.from_numpy(np.stack([tokens[s : s + seq_len] for s in starts]).astype(np.int64))


# --------------------------------------------------------------------------- stage 1: tokenizer


def train_tokenizer(files: list[Path], vocab_size: int, out: Path) -> None:
    """Byte-level BPE (GPT-2 / Qwen style pre-tokenisation) with the special tokens, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=True,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(f) for f in files], trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "mask_token": "<|mask|>", "model_max_length": 2048}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


# --------------------------------------------------------------------------- optimisation helpers


@dataclass
class Schedule:
    """Linear warm-up to `lr`, then cosine decay to `lr * final_fraction` at `steps`."""

    lr: float
    warmup: int
    steps: int
    final_fraction: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.lr * (self.final_fraction + (1 - self.final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer_step(optimizer, loss: torch.Tensor, params, clip: float) -> None:
    """One update: gradients of `loss`, clipped to norm `clip`, applied by `optimizer`."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


def end_step(args, out: Path, log, bar, model: Qwen3ForCausalLM, optimizer, step: int, record: dict, stop: bool, stage: str) -> None:
    """Appends the step's record to log.jsonl; checkpoints every --save-every steps, at the last step and on a stop."""
    log.write(json.dumps(record) + "\n")
    log.flush()
    if step % args.save_every == 0 or step == args.steps or stop:
        save_training_state(out, model, optimizer, step, {"stage": stage})
    if stop:
        bar.write(f"time budget of {args.minutes} min reached at step {step}; continue with --resume")


def save_training_state(out: Path, model: Qwen3ForCausalLM, optimizer, step: int, extra: dict) -> None:
    """Writes the model (HF layout) and the optimizer/step state, atomically enough for a stop at any time."""
    tmp = out / "checkpoint.tmp"
    save_model(model, tmp)
    torch.save({"optimizer": optimizer.state_dict(), "step": step, **extra}, tmp / "training_state.pt")
    final = out / "checkpoint"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)


def progress(total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=2.0, file=sys.stderr)


# --------------------------------------------------------------------------- stage 2: pretrain the base


@torch.no_grad()
def heldout_loss(model: Qwen3ForCausalLM, tokens: np.ndarray, seq_len: int, batches: int = 4, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy on fixed held-out windows."""
    rng = np.random.default_rng(1234)
    losses = []
    for _ in range(batches):
        x = random_windows(tokens, batch_size, seq_len + 1, rng)  # (B, T+1)
        logits = model(x[:, :-1])  # (B, T, V)
        losses.append(F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten()).item())
    return float(np.mean(losses))


def pretrain(args) -> None:
    """Trains a small Qwen3 base from scratch with next-token cross-entropy."""
    from .tokenizer import Tokenizer

    torch.manual_seed(args.seed)
    out = Path(args.out)
    tokenizer = Tokenizer(args.tokenizer)
    train_tokens, heldout_tokens, _ = load_corpus(tokenizer, args.data, args.pattern, args.heldout_percent, out / "data")
    print(f"corpus: {len(train_tokens):,} train tokens, {len(heldout_tokens):,} held-out tokens", file=sys.stderr)
    state = None
    if args.resume and (out / "checkpoint" / "training_state.pt").exists():
        from .model import load_model

        model = load_model(out / "checkpoint", dtype="float32", device="cpu")
        model.requires_grad_(True).train()
        state = torch.load(out / "checkpoint" / "training_state.pt", weights_only=False)
    else:
        fields = dict(model_type="qwen3", vocab_size=tokenizer.vocab_size, rms_norm_eps=1e-6,
                      eos_token_id=tokenizer.token_to_id("<|endoftext|>"), **MODEL_PRESETS[args.preset])
        model = Qwen3ForCausalLM(Qwen3Config.from_dict(fields))
        init_weights(model, args.seed)
    model.train()
    print(f"model: {num_parameters(model):,} parameters ({args.preset})", file=sys.stderr)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    step = 0
    rng = np.random.default_rng(args.seed)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        rng = np.random.default_rng(args.seed + step)
    schedule = Schedule(args.lr, args.warmup, args.steps)
    log = open(out / "log.jsonl", "a")
    t_start, tokens_seen = time.perf_counter(), 0
    bar = progress(args.steps, step, "pretrain")
    while step < args.steps:
        for group in optimizer.param_groups:
            group["lr"] = schedule(step)
        x = random_windows(train_tokens, args.batch_size, args.seq_len + 1, rng)  # (B, T+1)
        logits = model(x[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        optimizer_step(optimizer, loss, model.parameters(), args.clip)
        step += 1
        tokens_seen += x.numel()
        elapsed = time.perf_counter() - t_start
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens_seen / elapsed:,.0f}")
        record = {"step": step, "loss": round(loss.item(), 4), "lr": schedule(step - 1)}
        stop = args.minutes is not None and elapsed > args.minutes * 60
        if step % args.eval_every == 0 or step == args.steps or stop:
            model.eval()
            record["heldout_loss"] = round(heldout_loss(model, heldout_tokens, args.seq_len), 4)
            model.train()
            bar.write(f"step {step}: train loss {loss.item():.3f}, held-out loss {record['heldout_loss']:.3f}")
        end_step(args, out, log, bar, model, optimizer, step, record, stop, "pretrain")
        if stop:
            break
    bar.close()
    model.eval()
    save_model(model, out)
    copy_tokenizer(Path(args.tokenizer), out)
    print(f"saved base model to {out} (step {step})", file=sys.stderr)


def init_weights(model: Qwen3ForCausalLM, seed: int) -> None:
    """GPT-2 style init: N(0, 0.02) matrices, residual projections scaled by 1/sqrt(2 * layers)."""
    g = torch.Generator().manual_seed(seed)
    std_out = 0.02 / math.sqrt(2 * model.config.num_hidden_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, std_out if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02, generator=g)


# --------------------------------------------------------------------------- stage 3: distill the diffusion view


def block_starts(seq_len: int, block_size: int, offset: int) -> torch.Tensor:
    """Start positions s of the blocks [s, s+K) that fit in a sequence when the first starts at `offset`."""
    return torch.arange(offset, seq_len - block_size + 1, block_size)  # (nb,)


def dual_forward(model: Qwen3ForCausalLM, ids: torch.Tensor, block_size: int, offset: int):
    """One forward over an AR sequence and its diffusion copy, cut into blocks (the paper's dual-pass mask).

    ids (B, N): the AR view reads them causally (frozen teacher, no gradient), writing their K/V to
    a cache exactly as at inference. The diffusion copy has one block [x_s, MASK, …, MASK] at
    positions s … s+K-1 for every start s of `block_starts`, all in one diffusion forward over that
    cache; the mask lets a diffusion query of the block starting at s see the AR keys at positions
    < s and the diffusion keys of its own block only — exactly what it sees at inference, where the
    AR keys are the cache. The same model forward, layers and attention as decoding, only with the
    positions and the mask passed in.
    Returns (teacher logits (B, N, V), diffusion logits (B, M, V), starts), M = number of blocks × K;
    diffusion logit j*K + i is the draft for position starts[j] + 1 + i.
    """
    K = block_size
    B, N = ids.shape
    starts = block_starts(N, K, offset).to(ids.device)  # (nb,)
    M = len(starts) * K
    diff_ids = torch.full((B, M), model.config.mask_token_id, dtype=ids.dtype, device=ids.device)  # (B, M)
    diff_ids[:, ::K] = ids[:, starts]  # each block opens with its real token x_s
    block_of = torch.arange(M, device=ids.device) // K  # (M,)
    positions = starts[block_of] + torch.arange(M, device=ids.device) % K  # (M,): s … s+K-1 for each block
    sees_ar = torch.arange(N, device=ids.device)[None, :] < starts[block_of][:, None]  # (M, N): AR keys before the block
    sees_diff = block_of[:, None] == block_of[None, :]  # (M, M): own block, both directions
    mask = torch.cat([sees_ar, sees_diff], dim=1)[None, None]  # (1, 1, M, N+M) over the cache's slots

    cache = model.new_cache(N + M, batch_size=B)  # slots 0 … N-1: the AR keys; N … N+M-1: the diffusion blocks'
    with torch.no_grad():  # the AR stream: the frozen teacher, and the keys/values the diffusion queries read
        teacher = model(ids, cache)  # (B, N, V)
    student = model(diff_ids, cache, view="diffusion", position_ids=positions[None], attn_mask=mask)  # (B, M, V)
    return teacher, student, starts


def distill_loss(teacher: torch.Tensor, student: torch.Tensor, ids: torch.Tensor, starts: torch.Tensor, block_size: int,
                 kind: str = "kl", position_decay: float = 1.0) -> torch.Tensor:
    """Mean over block indices 0 … K-2 of KL(teacher ‖ diffusion view), or of cross-entropy to the data tokens.

    The diffusion logit at block index i of the block starting at s drafts position s+1+i; its
    teacher is the AR logit at position s+i (which predicts the same position).
    position_decay=g < 1 weights index i by g**i: a draft at index i counts only when every
    earlier one is accepted, so near indices matter most for the acceptance length. 1 = the
    paper's uniform mean.
    """
    K = block_size
    idx = (starts[:, None] + torch.arange(K - 1, device=starts.device)[None, :]).flatten()  # (nb*(K-1),) teacher positions
    keep = (torch.arange(student.shape[1], device=starts.device) % K) < K - 1  # (M,): drop each block's last index
    s = student[:, keep].float()  # (B, nb*(K-1), V)
    if kind == "ce":
        per_token = F.cross_entropy(s.flatten(0, 1), ids[:, idx + 1].flatten(), reduction="none").view(s.shape[:2])
    else:
        log_p = teacher[:, idx].float().log_softmax(-1)  # (B, nb*(K-1), V)
        per_token = (log_p.exp() * (log_p - s.log_softmax(-1))).sum(-1)  # (B, nb*(K-1))
    weight = position_decay ** torch.arange(K - 1, device=s.device, dtype=s.dtype).repeat(len(starts))  # (nb*(K-1),)
    return (per_token * weight).sum(-1).mean() / weight.sum()


def freeze_base(model: Qwen3ForCausalLM) -> tuple[list[torch.nn.Parameter], int, int]:
    """Freezes every weight but the diffusion view's; returns (trainable params, trainable count, total count)."""
    model.requires_grad_(False)
    params = [p for name, p in model.named_parameters() if "_diff" in name]
    for p in params:
        p.requires_grad_(True)
    return params, sum(p.numel() for p in params), num_parameters(model)


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


def self_distillation_data(model, tokens: np.ndarray, num_sequences: int, prompt_len: int, seq_len: int, rng, batch_size: int = 64):
    """Sequences of (corpus prompt + the base model's own greedy continuation): the text the drafter meets at decode time."""
    chunks = []
    bar = progress(num_sequences, 0, "self-distillation data")
    while sum(len(c) for c in chunks) < num_sequences:
        prompts = random_windows(tokens, batch_size, prompt_len, rng).to(model.device)  # (b, P)
        chunks.append(greedy_continuations(model, prompts, seq_len - prompt_len).cpu())
        bar.update(batch_size)
    bar.close()
    return torch.cat(chunks)[:num_sequences]  # (S, seq_len)


def heldout_prompts(tokens: np.ndarray, count: int, prompt_len: int, seed: int = 0) -> list[list[int]]:
    """Fixed prompts: `count` windows of the held-out tokens."""
    rng = np.random.default_rng(seed)
    return [w.tolist() for w in random_windows(tokens, count, prompt_len, rng)]


def acceptance_length(model: Qwen3ForCausalLM, prompts: list[list[int]], max_new_tokens: int, block_size: int) -> float:
    """Mean greedy acceptance length (tokens committed per draft-verify iteration), as the consensus decoder reports it."""
    from .consensus import generate_orthrus

    accepted = []
    for prompt in prompts:
        accepted += generate_orthrus(model, prompt, max_new_tokens, block_size=block_size, ignore_eos=True).accepted
    return float(np.mean(accepted))


def distill(args) -> None:
    """Trains the diffusion view of `--model` by KL distillation from its own frozen AR view."""
    from .model import init_diffusion_view, load_model
    from .tokenizer import Tokenizer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    resume = args.resume and (out / "checkpoint" / "training_state.pt").exists()
    model = load_model(out / "checkpoint" if resume else args.model, dtype="float32", device=device, attn="torch")
    tokenizer = Tokenizer(args.model)
    if not model.config.has_diffusion_view:
        mask_id = args.mask_token_id if args.mask_token_id is not None else tokenizer.token_to_id("<|mask|>")
        if mask_id is None:
            raise OrthrusError("the tokenizer has no <|mask|> token; pass --mask-token-id")
        init_diffusion_view(model, args.block_size, mask_token_id=mask_id)
    K = model.config.block_size
    train_sizes = sorted(set(args.train_block_sizes or [K]))
    if not all(1 <= k <= K for k in train_sizes):
        raise OrthrusError(f"--train-block-sizes {train_sizes} must lie in 1 … the block size {K}")
    params, trainable, total = freeze_base(model)
    print(f"trainable: {trainable:,} of {total:,} parameters ({100 * trainable / total:.1f}%, the diffusion view)", file=sys.stderr)

    train_tokens, heldout_tokens, _ = load_corpus(tokenizer, args.data, args.pattern, args.heldout_percent, out / "data")
    prompts = heldout_prompts(heldout_tokens, args.eval_prompts, args.eval_prompt_len)
    rng = np.random.default_rng(args.seed)
    self_data = None
    if args.self_distill:
        path = out / "data" / "self_distill.pt"
        if path.exists():
            self_data = torch.load(path)
        else:
            model.eval()
            self_data = self_distillation_data(model, train_tokens, args.self_distill, args.eval_prompt_len, args.seq_len, rng,
                                               args.self_distill_batch)
            torch.save(self_data, path)

    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    step = 0
    if resume:
        state = torch.load(out / "checkpoint" / "training_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        rng = np.random.default_rng(args.seed + step)
    schedule = Schedule(args.lr, args.warmup, args.steps)
    log = open(out / "log.jsonl", "a")
    if step == 0:
        model.eval()
        tau = acceptance_length(model, prompts, args.eval_new_tokens, K)
        log.write(json.dumps({"step": 0, "heldout_acceptance": round(tau, 3)}) + "\n")
        print(f"step 0: held-out acceptance length {tau:.2f} (block size {K})", file=sys.stderr)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    t_start, tokens_seen = time.perf_counter(), 0
    bar = progress(args.steps, step, "distill")
    while step < args.steps:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = schedule(step)
        n_self = int(round(args.batch_size * args.self_distill_fraction)) if self_data is not None else 0
        parts = [random_windows(train_tokens, args.batch_size - n_self, args.seq_len, rng)] if n_self < args.batch_size else []
        if n_self:
            parts.append(self_data[torch.from_numpy(rng.integers(0, len(self_data), n_self))])
        ids = torch.cat(parts).to(device)  # (B, N)
        k = int(rng.choice(train_sizes))  # one block size per step (several: the view drafts well at each)
        offset = int(rng.integers(0, k))  # random block offsets: every position gets trained
        with autocast:
            teacher, student, starts = dual_forward(model, ids, k, offset)
            loss = distill_loss(teacher, student, ids, starts, k, args.loss, args.position_decay)
        optimizer_step(optimizer, loss, params, args.clip)
        step += 1
        tokens_seen += ids.numel()
        elapsed = time.perf_counter() - t_start
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens_seen / elapsed:,.0f}")
        record = {"step": step, "loss": round(loss.item(), 4), "lr": schedule(step - 1), "block_size": k}
        stop = args.minutes is not None and elapsed > args.minutes * 60
        if step % args.eval_every == 0 or step == args.steps or stop:
            model.eval()
            if len(train_sizes) > 1:
                record["heldout_acceptance_by_block_size"] = {
                    str(b): round(acceptance_length(model, prompts, args.eval_new_tokens, b), 3) for b in train_sizes if b != K}
            record["heldout_acceptance"] = round(acceptance_length(model, prompts, args.eval_new_tokens, K), 3)
            bar.write(f"step {step}: loss {loss.item():.4f}, held-out acceptance length {record['heldout_acceptance']:.2f}")
        end_step(args, out, log, bar, model, optimizer, step, record, stop, "distill")
        if stop:
            break
    bar.close()
    model.eval().requires_grad_(False)
    save_model(model, out)
    copy_tokenizer(Path(args.model), out)
    print(f"saved Orthrus model to {out} (step {step})", file=sys.stderr)


# --------------------------------------------------------------------------- held-out prompts


def make_prompts(files: list[Path], count: int, num_lines: int = 12, seed: int = 0) -> list[dict]:
    """`count` prompts of `num_lines` consecutive lines, cut at line starts inside held-out files (JSONL records)."""
    rng = random.Random(seed)
    prompts = []
    candidates = [f for f in files if len(read_text(f).splitlines()) > 3 * num_lines]
    for i in range(count):
        f = candidates[i % len(candidates)]
        lines = read_text(f).splitlines(keepends=True)
        start = rng.randrange(num_lines, len(lines) - num_lines)
        text = "".join(lines[start : start + num_lines])
        prompts.append({"id": f"{f.parent.name}/{f.name}:{start + 1}", "prompt": text})
    return prompts


# --------------------------------------------------------------------------- command line


def optimization_args(sp, steps: int, lr: float, warmup: int) -> None:
    """The step count, batch shape and AdamW schedule flags that pretrain and distill share (defaults differ)."""
    sp.add_argument("--steps", type=int, default=steps)
    sp.add_argument("--batch-size", type=int, default=16)
    sp.add_argument("--seq-len", type=int, default=256)
    sp.add_argument("--lr", type=float, default=lr)
    sp.add_argument("--warmup", type=int, default=warmup)
    sp.add_argument("--clip", type=float, default=1.0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orthrus_min.train", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def data_args(sp):
        sp.add_argument("--data", nargs="+", default=["stdlib"], help="text files / folders, or 'stdlib' (this Python's standard library)")
        sp.add_argument("--pattern", default="*.py", help="file pattern searched in folders")
        sp.add_argument("--heldout-percent", type=float, default=3.0, help="percent of files held out (split by file)")

    tok = sub.add_parser("tokenizer", help="stage 1: train a byte-level BPE tokenizer")
    data_args(tok)
    tok.add_argument("--vocab-size", type=int, default=4096)
    tok.add_argument("--out", type=Path, required=True)

    pre = sub.add_parser("pretrain", help="stage 2: pretrain a tiny Qwen3 base from scratch")
    data_args(pre)
    pre.add_argument("--tokenizer", type=Path, required=True, help="folder with tokenizer.json (stage 1's --out)")
    pre.add_argument("--out", type=Path, required=True)
    pre.add_argument("--preset", choices=list(MODEL_PRESETS), default="tiny")
    optimization_args(pre, steps=3000, lr=2e-3, warmup=100)
    pre.add_argument("--eval-every", type=int, default=100)
    pre.add_argument("--save-every", type=int, default=50)
    pre.add_argument("--minutes", type=float, default=None, help="stop cleanly after this many minutes (resume later)")
    pre.add_argument("--resume", action="store_true", help="continue from --out/checkpoint")
    pre.add_argument("--seed", type=int, default=0)
    ex = sub.add_parser("export", help="write a trained checkpoint for shipping: weights in --dtype, config, tokenizer")
    ex.add_argument("--model", type=Path, required=True)
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--dtype", default="bfloat16", help="storage dtype of the weights (bfloat16 halves the size)")

    pr = sub.add_parser("prompts", help="write held-out prompts (JSONL: {\"id\", \"prompt\"} per line) for evaluation and benchmarks")
    data_args(pr)
    pr.add_argument("--count", type=int, default=16)
    pr.add_argument("--lines", type=int, default=12, help="lines of code per prompt")
    pr.add_argument("--out", type=Path, required=True, help="the .jsonl file to write")

    dis = sub.add_parser("distill", help="stage 3: train the diffusion view (KL to the frozen AR view)")
    data_args(dis)
    dis.add_argument("--model", type=Path, required=True, help="base (Qwen3) or Orthrus checkpoint folder")
    dis.add_argument("--out", type=Path, required=True)
    dis.add_argument("--block-size", type=int, default=16, help="K, tokens per draft block (the checkpoint's block_size)")
    dis.add_argument("--train-block-sizes", type=lambda t: [int(x) for x in t.split(",")], default=None, metavar="K1,K2,…",
                     help="train each step with a block size drawn from these (each <= --block-size), so the view drafts "
                          "well at every one of them; default: --block-size only")
    dis.add_argument("--mask-token-id", type=int, default=None, help="default: the tokenizer's <|mask|>")
    dis.add_argument("--loss", choices=("kl", "ce"), default="kl", help="KL to the AR view (paper) or cross-entropy to the data")
    dis.add_argument("--position-decay", type=float, default=1.0,
                     help="weight block index i of the loss by this**i (1 = uniform, the paper; < 1 favours the first drafts)")
    optimization_args(dis, steps=1000, lr=1e-3, warmup=50)
    dis.add_argument("--self-distill", type=int, default=0, metavar="N",
                     help="also train on N sequences of the base model's own greedy continuations of corpus prompts")
    dis.add_argument("--self-distill-fraction", type=float, default=0.75, help="share of each batch from those sequences")
    dis.add_argument("--self-distill-batch", type=int, default=64,
                     help="sequences generated at once for --self-distill (larger is faster on a GPU)")
    dis.add_argument("--eval-every", type=int, default=100)
    dis.add_argument("--eval-prompts", type=int, default=8, help="held-out prompts for the acceptance-length evaluation")
    dis.add_argument("--eval-prompt-len", type=int, default=64)
    dis.add_argument("--eval-new-tokens", type=int, default=64)
    dis.add_argument("--save-every", type=int, default=50)
    dis.add_argument("--minutes", type=float, default=None, help="stop cleanly after this many minutes (resume later)")
    dis.add_argument("--resume", action="store_true", help="continue from --out/checkpoint")
    dis.add_argument("--device", default="auto")
    dis.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "tokenizer":
            train_files, _ = split_files(corpus_files(args.data, args.pattern), args.heldout_percent)
            train_tokenizer(train_files, args.vocab_size, args.out)
            print(f"tokenizer with {args.vocab_size} tokens trained on {len(train_files)} files -> {args.out}", file=sys.stderr)
        elif args.command == "pretrain":
            args.out.mkdir(parents=True, exist_ok=True)
            pretrain(args)
        elif args.command == "export":
            from .model import load_model

            model = load_model(args.model, dtype=args.dtype, device="cpu")
            save_model(model, args.out)
            copy_tokenizer(args.model, args.out)
            size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file()) / 2**20
            print(f"exported {num_parameters(model):,} parameters ({args.dtype}) to {args.out}: {size:.1f} MiB", file=sys.stderr)
        elif args.command == "prompts":
            _, heldout_files = split_files(corpus_files(args.data, args.pattern), args.heldout_percent)
            records = make_prompts(heldout_files, args.count, args.lines)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text("".join(json.dumps(r) + "\n" for r in records))
            print(f"wrote {len(records)} held-out prompts from {len(heldout_files)} files to {args.out}", file=sys.stderr)
        else:
            distill(args)
    except OrthrusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
