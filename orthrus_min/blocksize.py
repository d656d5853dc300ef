"""`block_size="auto"`: the block size K chosen for this machine, and re-chosen as decoding goes.

An Orthrus iteration at block size K costs c(K) seconds (a draft and a verify pass over K
tokens) and commits 1 + min(n, K-1) tokens, where n is how many drafts the AR view would accept
from an unbounded block. So the committed tokens per second at K are

    rate(K) = (1 + E[min(n, K-1)]) / c(K)

and the best K maximises it. Both factors depend on where we run. On a GPU a forward over 32
tokens costs about what a 1-token forward does, so the largest K wins; on a CPU c(K) grows with K
(measured here: 3x at K = 8, 5x at K = 32, for a 1.7B-shaped model in float32), and the best K
is smaller. E[min(n, K-1)] depends on the model, the prompt and how far decoding has gone.

`BlockSizeChooser` keeps both estimates:
  * c(K): seconds per step, first from a few timed forwards (`measure_step_costs`, a quarter of a
    second on a CPU: `step_costs` keeps what an eager run ended with in the cache folder, so the next
    run on this machine starts from it), then from the steps the loop actually ran (their wall time,
    compile warm-up excluded) — so compiled decoding and a growing context are priced as they really are;
  * E[min(n, K-1)]: from the accepted-draft counts n of recent steps. A step at block size K
    observes min(n, K-1) exactly, so it answers the question for every K' <= K: its count,
    capped at K'-1. For a larger K' it says only "at least K-1"; until enough steps have run at
    K' or above, the chooser extrapolates with a geometric model (each draft accepted with one
    probability), and now and then (every `probe_every` steps) it tries the next larger K, which
    keeps the estimate honest.

The choice changes speed only: every K gives exactly the AR output (the consensus rule does not
depend on K), which the tests check. Compiled decoding `keep`s one K instead — each new K is a graph
to compile, a minute on a CPU — and `engine.Compiler.block_size` remembers it for the next run.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence

import torch

from .cachedir import key, remember, remembered

WINDOW = 64  # recent observations kept (acceptance drifts as the context grows)
MIN_SEEN = 4  # observations at a block size >= K needed to use their average for K
PRIOR_ACCEPT = 0.7  # before any observation: each draft accepted with this probability
SWITCH_MARGIN = 0.05  # compiled decoding changes its kept K only for a gain this large (each change is a compile)
STEP_COSTS = "step_costs.json"  # the cache folder's table of step costs (cachedir.py)


def expected_tokens(accepted: Sequence[int], K: int) -> float:
    """1 + E[min(n, K-1)]: tokens per iteration at block size K, from accepted-draft counts n (>= 1 count)."""
    return 1 + sum(min(n, K - 1) for n in accepted) / len(accepted)


def geometric_tokens(observations: Sequence[tuple[int, int]], K: int, prior: float = PRIOR_ACCEPT) -> float:
    """1 + E[min(n, K-1)] if each draft were accepted with one probability a, estimated from (n, K_seen) pairs.

    A count n < K_seen - 1 is n acceptances then a rejection; n = K_seen - 1 is n acceptances and no
    verdict after them (the block ended). a = acceptances / (acceptances + rejections), with one
    pseudo-observation of `prior`. Then E[min(n, K-1)] = a + a^2 + … + a^(K-1).
    """
    accepts = prior + sum(n for n, _ in observations)
    rejects = (1 - prior) + sum(1 for n, K_seen in observations if n < K_seen - 1)
    a = accepts / (accepts + rejects)
    return 1 + sum(a ** i for i in range(1, K))


def block_size_rates(costs: dict[int, float], observations: Sequence[tuple[int, int]], min_seen: int = MIN_SEEN) -> dict[int, float]:
    """rate(K) = tokens(K) / costs[K], committed tokens per second, for every K of `costs`.

    observations: (n, K_seen) pairs, accepted-draft counts n from steps at block size K_seen. A count
    from K_seen >= K is exact for K once capped at K-1, so tokens(K) is their average when there are
    at least `min_seen` of them; below that, the geometric estimate from every observation.
    """
    def tokens(K: int) -> float:
        seen = [n for n, K_seen in observations if K_seen >= K]
        return expected_tokens(seen, K) if len(seen) >= min_seen else geometric_tokens(observations, K)

    return {K: tokens(K) / costs[K] for K in sorted(costs)}


def best_block_size(costs: dict[int, float], observations: Sequence[tuple[int, int]], min_seen: int = MIN_SEEN) -> int:
    """The K of `costs` with the most tokens per second (`block_size_rates`)."""
    rates = block_size_rates(costs, observations, min_seen)
    return max(rates, key=rates.get)


class BlockSizeChooser:
    """Picks K before every Orthrus step from measured step costs and the acceptance seen so far.

    candidates: the block sizes it may use; costs: a first estimate of seconds per step at each
    (e.g. `measure_step_costs`). Call `next()` for the K of the next step and `observe(K, n, seconds)`
    with that step's accepted-draft counts (one per row that went on decoding) and its wall time.
    """

    def __init__(self, candidates: Sequence[int], costs: dict[int, float], probe_every: int = 8):
        self.candidates = sorted(candidates)
        self.costs = dict(costs)
        self.first_costs = dict(costs)  # before any real step: `worth_switching` compares every K with these
        self.probe_every = probe_every
        self.observations: deque[tuple[int, int]] = deque(maxlen=WINDOW)  # (n accepted drafts, K of the step)
        self.step_seconds: dict[int, deque] = {K: deque(maxlen=WINDOW) for K in self.candidates}
        self.used: list[int] = []

    def best(self) -> int:
        """The candidate with the most committed tokens per second by the current estimates."""
        return best_block_size({K: self.costs[K] for K in self.candidates}, self.observations)

    def keep(self, K: int) -> None:
        """From now on every step uses block size K (compiled decoding: each new K would be a graph to compile)."""
        self.candidates = [K]

    def worth_switching(self, margin: float = SWITCH_MARGIN) -> int | None:
        """After steps at a kept K: a block size expected to be faster by more than `margin`, else None.

        Every first candidate is priced by its first cost estimate (the ratios between block sizes
        are what count) and by the acceptance seen at K: exact for smaller sizes, extrapolated for
        larger ones. Compiled decoding asks after each run and remembers the answer for the next.
        """
        K = self.candidates[0]
        if len(self.observations) < MIN_SEEN:
            return None
        rates = block_size_rates(self.first_costs, self.observations)
        best = max(rates, key=rates.get)
        return best if best != K and K in rates and rates[best] > (1 + margin) * rates[K] else None

    def next(self) -> int:
        """The block size for the next step: the best estimate, or (every `probe_every` steps) one size larger."""
        K = self.best()
        if len(self.used) % self.probe_every == self.probe_every - 1 and K != self.candidates[-1]:
            K = self.candidates[self.candidates.index(K) + 1]  # probe: is a longer block worth it now?
        self.used.append(K)
        return K

    def next_args(self) -> dict:
        """The engine's interface (`Step.tuner`): the next step's arguments."""
        return {"block_size": self.next()}

    def observe_step(self, args: dict, kept: Sequence[int], seconds: float) -> None:
        """The engine's interface: a step ran with `args`, its rows that go on decoding kept `kept` tokens each."""
        self.observe(args["block_size"], [k - 1 for k in kept], seconds)

    def observe(self, K: int, accepted: Sequence[int], seconds: float | None = None) -> None:
        """Records a step at block size K: accepted-draft counts (rows still decoding) and its wall time.

        The first timing at each K is dropped (it may include a compile or a cold cache); from the
        second on, the median of the recent timings replaces the measured estimate.
        """
        self.observations.extend((n, K) for n in accepted)
        if seconds is None:
            return
        times = self.step_seconds[K]
        if self.used.count(K) > 1:
            times.append(seconds)
            self.costs[K] = statistics.median(times)


@torch.inference_mode()
def measure_step_costs(model, candidates: Sequence[int], batch_size: int = 1, context: int = 64,
                       repeats: int = 2, clock: Callable[[], float] = time.perf_counter) -> dict[int, float]:
    """Seconds of one Orthrus step at each block size K: two forwards over (batch_size, K) tokens after `context` cached ones.

    The median of `repeats` timed pairs, after one untimed pair (allocations, caches). Run once per
    model, batch size and compile mode; the chooser refines it from real steps.
    """
    device = model.device
    cache = model.new_cache(context + max(candidates), batch_size)
    cache.advance(context)  # declare `context` entries: their values do not change the cost
    costs = {}
    for K in candidates:
        ids = torch.zeros(batch_size, K, dtype=torch.long, device=device)  # (B, K)
        times = []
        for i in range(repeats + 1):
            start = clock()
            model(ids, cache, view="diffusion" if model.config.has_diffusion_view else "ar")
            model(ids, cache)
            cache.rollback(context)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append(clock() - start)
        costs[K] = statistics.median(times)
    return costs


def step_costs_key(model, batch_size: int) -> str:
    """What step costs depend on besides K: the model's shape and dtype, the device, the attention, the batch, the threads."""
    device = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else torch.backends.cpu.get_cpu_capability()
    parts = [vars(model.config), str(model.dtype), model.device.type, device, model.attn_backend, model.model.batch_invariant,
             batch_size, torch.get_num_threads(), torch.__version__]
    return key(parts)


def step_costs(model, candidates: Sequence[int], batch_size: int = 1) -> dict[int, float]:
    """Seconds of one Orthrus step at each candidate K for this model, machine and batch size: what an earlier run left in
    the cache folder (`remember_step_costs`), else `measure_step_costs` now (and kept for the next run)."""
    known = remembered(STEP_COSTS).get(step_costs_key(model, batch_size))
    if isinstance(known, dict):
        costs = {K: known.get(str(K)) for K in candidates}
        if all(type(c) is float and c > 0 for c in costs.values()):
            return costs
    costs = measure_step_costs(model, candidates, batch_size)
    remember_step_costs(model, batch_size, costs)
    return costs


def remember_step_costs(model, batch_size: int, costs: dict[int, float]) -> None:
    """Keeps `costs` (seconds per step at each K; after an eager run, the chooser's, refined by the steps it ran) for the
    next run's `step_costs`."""
    remember(STEP_COSTS, step_costs_key(model, batch_size), {str(K): float(c) for K, c in costs.items()})


__all__ = ["expected_tokens", "geometric_tokens", "block_size_rates", "best_block_size", "BlockSizeChooser", "measure_step_costs",
           "step_costs", "remember_step_costs", "step_costs_key", "STEP_COSTS"]
