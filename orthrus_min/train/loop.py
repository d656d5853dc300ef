"""The one training loop that pretraining and distillation share: data parallel, accumulated, resumable.

One optimizer step = `--global-batch` rows. Every process takes the same next G rows from the
row stream (packing.py) and keeps its own contiguous slice of G / world rows, cut into
micro-batches of `--batch-size` rows; gradients are accumulated over the micro-batches and
all-reduced once per step by DistributedDataParallel (`no_sync` before the last micro-batch).

Each micro-batch's loss is the *sum* of its weighted per-token losses divided by the weight of the
whole global batch (all micro-batches of all processes, known before the forward from the data
alone), times the world size that DDP's gradient averaging divides by. So the gradient is the
gradient of the mean over the global batch whatever the number of processes and micro-batches:
two processes and one process with the same global batch take the same steps.

A job (pretrain.py, distill.py) supplies the model, its trainable parameters, how to turn rows
into a micro-batch and a loss, and what to evaluate. The loop does the rest: learning-rate
schedule, clipping, bf16 autocast, evaluation, logging (rank 0), checkpoints (rank 0, atomic),
the time budget, and resuming with the model, optimizer, data position and random states restored.

Divergence: a step whose loss or gradient norm is not finite (on any process) stops the run before
its update, with a one-line error; nothing is saved from then on. Saves check the weights too
(checkpoint.check_finite_weights), and a resume from non-finite weights is refused.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import save_model
from ..errors import OrthrusError
from ..files import WriteFailed, io_reason, listing
from .checkpoint import (check_finite_weights, copy_tokenizer, latest_checkpoint, load_state, load_tensors, non_finite, rng_state, save_checkpoint,
                         set_rng_state)
from .dist import Dist
from .packing import RowStream, split_for_rank
from .progress import Progress, RunLog


@dataclass
class Schedule:
    """Linear warm-up to `lr`, then cosine decay to `lr * final_fraction` at `steps`."""

    lr: float
    warmup: int
    steps: int
    final_fraction: float = 0.1

    def __call__(self, step: int) -> float:
        """The learning rate of step `step` (0-based)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.lr * (self.final_fraction + (1 - self.final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class LoopConfig:
    """What the loop needs from the command line."""

    out: Path
    steps: int
    global_batch: int
    micro_batch: int
    lr: float
    warmup: int
    final_lr_fraction: float = 0.1
    clip: float = 1.0
    weight_decay: float = 0.0
    eval_every: int = 100
    save_every: int = 50
    minutes: float | None = None
    log_interval: float = 30.0
    settings: dict = field(default_factory=dict)  # recorded in every checkpoint


def write_final_model(model, out: Path, tokenizer_dir: Path | None) -> None:
    """config.json, model.safetensors and the tokenizer files in `out`, each replaced atomically."""
    check_finite_weights(model, f"the trained model for {out}")
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=".final-"))
        save_model(model, tmp)
        if tokenizer_dir is not None:
            copy_tokenizer(tokenizer_dir, tmp)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    except Exception as e:
        raise WriteFailed(f"cannot write the trained model to {out} ({io_reason(e)}); the latest checkpoint under "
                           "checkpoints/ holds the same weights") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


class Trainer:
    """Runs a job for `config.steps` optimizer steps on every process of `dist`."""

    def __init__(self, job, config: LoopConfig, stream: RowStream, dist: Dist):
        self.job, self.cfg, self.stream, self.dist = job, config, stream, dist
        self.model = job.model
        self.optimizer = torch.optim.AdamW(job.params, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
        self.schedule = Schedule(config.lr, config.warmup, config.steps, config.final_lr_fraction)
        self.step, self.tokens_seen = 0, 0
        world, G, m = dist.world, config.global_batch, config.micro_batch
        if G % (world * m):
            raise OrthrusError(f"--global-batch {G} is not divisible by world size × --batch-size = {world} × {m}")

    # ----------------------------------------------------------------- resume

    def resume(self, folder: Path) -> None:
        """Restores the trainable weights, optimizer, data position, token count and this process's random states."""
        state = load_state(folder)
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        tensors = load_tensors(folder, names, self.dist.device)
        bad = non_finite(tensors.items())
        if bad:
            raise OrthrusError(f"--resume: {folder} holds NaN or infinite weights ({listing(bad, 2)}): a diverged run "
                               "cannot be continued; start again with --overwrite and a lower --lr")
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if n in tensors:
                    p.copy_(tensors[n])
        self.optimizer.load_state_dict(state["optimizer"])
        self.stream.load_state(state["data"])
        self.step, self.tokens_seen = int(state["step"]), int(state.get("tokens", 0))
        rngs = state.get("rng", [])
        if self.dist.rank < len(rngs):
            set_rng_state(rngs[self.dist.rank])

    def diverged(self, loss_sum: float, grad_norm: float) -> OrthrusError:
        """The one-line error of a step whose loss or gradient is not finite (the weights are still the last step's)."""
        previous = latest_checkpoint(self.cfg.out)
        kept = f"the last checkpoint ({previous.name}) is kept" if previous else "no checkpoint was saved"
        what = f"the loss is {loss_sum}" if not math.isfinite(loss_sum) else f"the gradient norm is {grad_norm}"
        return OrthrusError(f"step {self.step + 1}: {what}: training diverged and stopped, saving nothing more ({kept}); "
                            f"lower --lr (now {self.cfg.lr:g}) or raise --warmup")

    def state(self, rngs: list) -> dict:
        return {"format": 2, "stage": self.job.stage, "step": self.step, "tokens": self.tokens_seen,
                "optimizer": self.optimizer.state_dict(), "data": self.stream.state(), "rng": rngs,
                "schedule": {"lr": self.schedule.lr, "warmup": self.schedule.warmup, "steps": self.schedule.steps,
                             "final_fraction": self.schedule.final_fraction},
                "identity": self.job.identity, "settings": self.cfg.settings, "world_size": self.dist.world}

    def save(self) -> None:
        """Checkpoint of the current step (rank 0 writes; every process learns whether it worked)."""
        rngs = self.dist.gather_objects(rng_state())
        error = None
        if self.dist.is_main:
            try:
                save_checkpoint(self.cfg.out, self.step, self.model, self.state(rngs), self.job.tokenizer_dir)
            except OrthrusError as e:
                error = (isinstance(e, WriteFailed), str(e))
        error = self.dist.broadcast_object(error)
        if error:
            raise (WriteFailed if error[0] else OrthrusError)(error[1])

    # ----------------------------------------------------------------- the loop

    def forward_module(self):
        """The model, wrapped in DistributedDataParallel when there are several processes."""
        if not self.dist.active:
            return self.model, None
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.dist.device] if self.dist.device.type == "cuda" else None
        ddp = DistributedDataParallel(self.model, device_ids=ids, broadcast_buffers=False)
        return ddp, ddp

    def train_step(self, forward, ddp) -> dict:
        """One optimizer step over the global batch; returns the step's log record."""
        cfg, dist = self.cfg, self.dist
        lr = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        refs = self.stream.take(cfg.global_batch)  # the same rows on every process
        micros = [self.job.micro_batch(chunk, self.step) for chunk in split_for_rank(refs, dist.rank, dist.world, cfg.micro_batch)]
        total_weight, tokens = dist.sum(sum(m.weight for m in micros), sum(m.tokens for m in micros))
        loss_sum = torch.zeros((), dtype=torch.float64, device=dist.device)
        if total_weight > 0:
            for i, micro in enumerate(micros):
                sync = ddp is None or i == len(micros) - 1
                with (contextlib.nullcontext() if sync else ddp.no_sync()), self.job.autocast():
                    loss = self.job.loss_sum(forward, micro)  # sum of weighted per-token losses
                (loss * (dist.world / total_weight)).backward()
                loss_sum += loss.detach().double()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.job.params, cfg.clip))
            if dist.any(not (math.isfinite(float(loss_sum)) and math.isfinite(grad_norm))):  # before the update: no NaN weights
                raise self.diverged(float(loss_sum), grad_norm)
            self.optimizer.step()
        else:
            grad_norm = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        (global_loss,) = dist.sum(float(loss_sum))
        self.step += 1
        self.tokens_seen += int(tokens)
        loss = global_loss / total_weight if total_weight > 0 else float("nan")
        return {"step": self.step, "loss": round(loss, 6), "lr": lr, "grad_norm": round(grad_norm, 4), "tokens": int(tokens),
                **self.job.step_record(self.step - 1)}

    def run(self, resume_from: Path | None = None) -> None:
        """Trains to `steps` (or until the time budget), evaluating, logging and checkpointing on the way."""
        cfg, dist = self.cfg, self.dist
        if resume_from is not None:
            self.resume(resume_from)
        log = RunLog(cfg.out / "log.jsonl", dist.is_main, resume_step=self.step if resume_from is not None else None)
        bar = Progress(cfg.steps, self.step, self.job.stage, enabled=dist.is_main, interval=cfg.log_interval)
        if resume_from is not None:
            bar.write(f"resumed from {resume_from} at step {self.step} of {cfg.steps}")
        if self.step == 0 and resume_from is None:
            first = self.job.evaluate(dist, initial=True)
            if first:
                log.write({"step": 0, **first})
                bar.write(f"step 0: {self.job.describe(first)}")
        forward, ddp = self.forward_module()
        t0, tokens0, stopped = time.perf_counter(), self.tokens_seen, False
        try:
            while self.step < cfg.steps:
                self.model.train()
                record = self.train_step(forward, ddp)
                elapsed = time.perf_counter() - t0
                record["tokens_per_s"] = round((self.tokens_seen - tokens0) / elapsed, 1)
                stopped = dist.any(cfg.minutes is not None and elapsed > cfg.minutes * 60)
                last = self.step == cfg.steps or stopped
                if self.step % cfg.eval_every == 0 or last:
                    metrics = self.job.evaluate(dist, initial=False)
                    record.update(metrics)
                    if metrics:
                        bar.write(f"step {self.step}: loss {record['loss']:.4f}, {self.job.describe(metrics)}")
                log.write(record)
                bar.update(self.step, record["loss"], record["tokens_per_s"])
                if self.step % cfg.save_every == 0 or last:
                    self.save()
                if stopped:
                    bar.write(f"time budget of {cfg.minutes} min reached at step {self.step}; continue with --resume")
                    break
        finally:
            bar.close()
            log.close()


__all__ = ["Schedule", "LoopConfig", "Trainer", "write_final_model"]
