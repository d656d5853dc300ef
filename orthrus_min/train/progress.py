"""Progress for people (a bar on a terminal, a line every so often in a log file) and for programs (`log.jsonl`).

Only rank 0 reports. On a terminal, tqdm redraws at most once a second. When stderr is not a
terminal (a batch job's log), no bar is drawn at all: one plain line — step, loss, tokens/s,
elapsed time and ETA — every `--log-interval` seconds, so a day-long run writes a readable log
instead of megabytes of carriage returns. Intervals are measured from the Progress's own start (the
first update always writes a line), never from the clock's origin: `time.perf_counter()` may be
near 0 on a freshly booted machine.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..errors import OrthrusError
from ..files import WriteFailed, io_reason, write_text_atomically


def duration(seconds: float) -> str:
    """'1h02m', '3m05s', '12s'."""
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Steps done out of `total`, with the loss, tokens/s and the ETA of the steps still to go."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool = True, interval: float = 30.0, stream=None):
        self.total, self.step, self.desc, self.enabled, self.interval = total, initial, desc, enabled, interval
        self.stream = stream or sys.stderr
        self.start_step, self.t0 = initial, time.perf_counter()
        self.last_line: float | None = None  # when the last plain line was written; None: not yet
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=1.0, file=self.stream)

    def eta(self) -> float:
        """Seconds left at this session's mean step time."""
        done = self.step - self.start_step
        return (time.perf_counter() - self.t0) / done * (self.total - self.step) if done else float("nan")

    def update(self, step: int, loss: float | None = None, tokens_per_s: float | None = None) -> None:
        """Records that `step` steps (or items) are done, with the latest loss and throughput when there are any."""
        if not self.enabled:
            return
        advanced, self.step = step - self.step, step
        fields = ([f"loss {loss:.4f}"] if loss is not None else []) + \
                 ([f"{tokens_per_s:,.0f} tokens/s"] if tokens_per_s is not None else [])
        if self.bar is not None:
            self.bar.update(advanced)
            if fields:
                self.bar.set_postfix_str(", ".join(fields), refresh=False)
            return
        now = time.perf_counter()
        if self.last_line is None or now - self.last_line >= self.interval or step == self.total:
            self.last_line = now
            eta = self.eta()
            self.write(" | ".join([f"{self.desc} {step}/{self.total} ({100 * step / max(1, self.total):.0f}%)", *fields,
                                   f"elapsed {duration(now - self.t0)}", f"ETA {duration(eta) if eta == eta else '?'}"]))

    def write(self, message: str) -> None:
        """A message line that does not break the bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RunLog:
    """`log.jsonl`: one JSON object per step (and per evaluation). On a resume, records past the checkpoint's step
    (written by the interrupted run after its last save) are dropped first, so every step appears once."""

    def __init__(self, path: Path, enabled: bool = True, resume_step: int | None = None):
        self.enabled, self.path = enabled, path
        self.file = None
        if not enabled:
            return
        try:
            if resume_step is not None and path.exists():
                kept = []
                for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # the interrupted run's last, half-written line
                    if not isinstance(record, dict) or record.get("step", 0) <= resume_step:
                        kept.append(line)
                write_text_atomically(path, "".join(line + "\n" for line in kept))
            self.file = open(path, "a")
        except OSError as e:
            raise WriteFailed(f"{path}: cannot write the run's log ({io_reason(e)})") from None

    def write(self, record: dict) -> None:
        if self.file is not None:
            try:
                self.file.write(json.dumps(record) + "\n")
                self.file.flush()
            except OSError as e:  # a full disk
                raise WriteFailed(f"{self.path}: cannot write the run's log ({io_reason(e)}); the last checkpoint is "
                                   "intact: free space and continue with --resume") from None

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass  # already reported by write()


__all__ = ["Progress", "RunLog", "duration"]
