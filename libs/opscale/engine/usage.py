"""What one simulated engine has done over time: busy time, energy, compute (FLOPs), output, decode
and prefill tokens, and the recent runs that its load reports are computed from.

The engine (opscale.engine.sim) tells the meter about every run of iterations it commits and every
stretch it sits idle; the meter integrates power (idle draw always, dynamic draw in proportion to the
GPUs' busy time) and keeps the runs of the last report window. It decides nothing and reads no clock:
every call carries its times.

Two utilisation figures come from it, and they answer different questions (HeteroScale, arXiv
2508.19559, finds the first fails as a scaling signal for decode and the second does not):
- GPU utilisation, as nvidia-smi defines it: the fraction of time a kernel runs, i.e. time in
  iterations over time (`busy_s`). A decode engine that is never idle scores 1 whatever its batch;
- SM activity: the compute actually done over what the GPUs could do, FLOPs over (time x peak FLOP/s
  of the instance's GPUs). A decode step reads the weights and the KV cache for a few FLOPs per byte:
  memory-bound, so its SM activity stays low even when the GPU is busy all the time.

FLOPs are not priced run by run (a run is the simulator's hot path): a run reports the work it did in
the model's units, and the meter prices any set of runs at once with the model's coefficients
(opscale.perf.flops): `per_token` x (decode tokens + computed prompt tokens) + `per_logit` x (decode
tokens + runs that prefilled, each sampling logits for its last prompt token) + `per_pair` x attention
(query, key) pairs, the decode tokens' context included.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from functools import reduce
from operator import add

from opscale.perf.flops import ModelFlops

# Numbers kept per run in the report window: start, duration, and the meter's running totals of output
# tokens and attention pairs as of its end (so that a window's sums are two lookups, not a sum over it).
_RUN = 4
# Numbers kept per run that prefilled (a general iteration with prefill chunks; fewer than half the runs
# of a busy engine, so they are kept apart), again running totals as of its end: output tokens sampled
# by prefills (not decode steps), prompt tokens prefilled (prefix-cache hits included), prompt tokens
# computed (the cache's misses).
_PREFILL = 3


class UsageWindow:
    """What the runs of one report window did: busy time and FLOPs (of the time inside the window),
    and the tokens of the runs over by its end."""

    __slots__ = ("busy_s", "flops", "output_tokens", "decode_tokens", "prefill_tokens", "prefill_computed_tokens")

    def __init__(self, busy_s: float, flops: float, output_tokens: int, decode_tokens: int, prefill_tokens: int,
                 prefill_computed_tokens: int) -> None:
        self.busy_s = busy_s
        self.flops = flops
        self.output_tokens = output_tokens
        self.decode_tokens = decode_tokens
        self.prefill_tokens = prefill_tokens
        self.prefill_computed_tokens = prefill_computed_tokens


class UsageMeter:
    """Accounting, as of the engine's last step boundary: `busy_s` (time in iterations), `energy_j`
    (power integrated from `start`, idle draw included), `flops` (arithmetic done, priced with
    `model_flops`), `output_tokens` (every token sampled, a prefill's first token included),
    `decode_tokens` (those sampled by decode steps: one per decoding sequence per step),
    `prefill_tokens` (prompt tokens a prefill covered, whether computed or served from the prefix
    cache; recomputation after a preemption included) and `prefill_computed_tokens` (those computed:
    the prefix cache's misses).

    The runs of the last `window_s`, for reports, from run `_win_head` on: their ends, in order, and
    `_RUN` numbers a run; the runs that prefilled again, from `_pf_head` on, with `_PREFILL` numbers
    each. Flat arrays of doubles rather than a deque of tuples: a report reads them, and contiguous
    numbers cost far fewer cache misses than an object per run (counts are whole numbers far below
    2**53: exact as doubles, and so are their differences); the ends alone, so that the window's edge
    is a binary search. Counts are kept as running totals, so what the runs from i to j did is the
    total at j less the total before i (`_before`: the totals at the last run dropped from the arrays).
    """

    __slots__ = ("idle_w", "dynamic_w", "window_s", "model_flops", "busy_s", "energy_j", "output_tokens",
                 "_pairs", "_first_tokens", "_prefill_tokens", "_computed_tokens", "_pf_dropped",
                 "_interrupted_flops", "_accounted_s", "_win_end", "_win_data", "_win_head", "_win_before",
                 "_pf_end", "_pf_data", "_pf_head", "_pf_before")

    def __init__(self, idle_w: float, dynamic_w: float, window_s: float, model_flops: ModelFlops) -> None:
        self.idle_w = idle_w
        self.dynamic_w = dynamic_w  # the draw above idle at full busy
        self.window_s = window_s
        self.model_flops = model_flops
        self.busy_s = 0.0
        self.energy_j = 0.0
        self.output_tokens = 0
        # Running totals. Counts of tokens as doubles: they go into the arrays as they are, no int to
        # convert (a run that prefilled is a frequent event), and stay exact far beyond any run's count.
        self._pairs = 0.0  # attention (query, key) pairs
        self._first_tokens = 0.0  # output tokens sampled by prefills
        self._prefill_tokens = 0.0
        self._computed_tokens = 0.0
        self._pf_dropped = 0  # runs that prefilled, dropped from the arrays
        self._interrupted_flops = 0.0  # runs stopped part-way: their share of the arithmetic
        self._accounted_s = 0.0  # energy is integrated up to here
        self._win_end = array("d")
        self._win_data = array("d")
        self._win_head = 0
        self._win_before = (0.0, 0.0)  # output tokens and pairs at the last run dropped
        self._pf_end = array("d")
        self._pf_data = array("d")
        self._pf_head = 0
        self._pf_before = (0.0, 0.0, 0.0)

    @property
    def flops(self) -> float:
        prefill_runs = self._pf_dropped + len(self._pf_end)
        return self._interrupted_flops + self._price(self.decode_tokens, self.prefill_computed_tokens, prefill_runs,
                                                     self._pairs)

    @property
    def decode_tokens(self) -> int:
        return self.output_tokens - int(self._first_tokens)

    @property
    def prefill_tokens(self) -> int:
        return int(self._prefill_tokens)

    @property
    def prefill_computed_tokens(self) -> int:
        return int(self._computed_tokens)

    def _price(self, decode_tokens: int, computed_tokens: int, prefill_runs: int, pairs: float) -> float:
        """FLOPs of runs that did this work (see the module docstring)."""
        return self.model_flops.of_work(decode_tokens + computed_tokens, decode_tokens + prefill_runs, pairs)

    def start(self, now_s: float) -> None:
        """Integrate energy from `now_s` (the engine's first call)."""
        self._accounted_s = now_s

    def idle_until(self, now_s: float) -> None:
        """Nothing ran since the last accounted instant: idle draw up to `now_s`."""
        self.energy_j += self.idle_w * (now_s - self._accounted_s)
        self._accounted_s = now_s

    def record_run(self, start_s: float, end_s: float, busy_s: float, tokens: int, pairs: float,
                   prefill_tokens: int = 0, computed_tokens: int = 0, first_tokens: int = 0) -> None:
        """A run of iterations from `start_s` to `end_s`, the GPUs busy `busy_s` of it (for power): it
        sampled `tokens` output tokens and its attention spanned `pairs` (query, key) pairs. A run that
        prefilled also says how many prompt tokens it covered (`prefill_tokens`), how many of them it
        computed (`computed_tokens`; the rest came from the prefix cache) and how many of its output
        tokens the prefills it completed sampled (`first_tokens`; the rest came from decode steps)."""
        # Idle draw from the last accounted instant to the start, then the run's own draw.
        self.energy_j += self.idle_w * (end_s - self._accounted_s) + self.dynamic_w * busy_s
        self._accounted_s = end_s
        duration_s = end_s - start_s
        self.busy_s += duration_s
        output = self.output_tokens = self.output_tokens + tokens
        total_pairs = self._pairs = self._pairs + pairs
        ends = self._win_end
        ends.append(end_s)
        self._win_data.extend((start_s, duration_s, output, total_pairs))
        if prefill_tokens:
            first = self._first_tokens = self._first_tokens + first_tokens
            prefill = self._prefill_tokens = self._prefill_tokens + prefill_tokens
            computed = self._computed_tokens = self._computed_tokens + computed_tokens
            self._pf_end.append(end_s)
            self._pf_data.extend((first, prefill, computed))
        if len(ends) >= 4096:  # an engine nobody asks for reports: keep the window bounded all the same
            self._forget_runs_before(end_s - self.window_s)

    def record_interrupted(self, start_s: float, now_s: float, run_s: float, busy_s: float, flops: float) -> None:
        """A run of `run_s` (busy `busy_s`, doing `flops`) from `start_s`, stopped at `now_s`: it drew
        its own power and did its share of the arithmetic until then; its outputs are lost, so it counts
        no tokens and no report sees it."""
        elapsed_s = now_s - start_s
        self.energy_j += self.idle_w * (now_s - self._accounted_s) + self.dynamic_w * busy_s * elapsed_s / run_s
        self._accounted_s = now_s
        self.busy_s += elapsed_s
        self._interrupted_flops += flops * elapsed_s / run_s

    def window(self, now_s: float) -> UsageWindow:
        """The runs recorded, over the window that ends at `now_s`: busy time and FLOPs of the part of
        each run inside the window (FLOPs in proportion to time), tokens of the runs over by now_s."""
        since = now_s - self.window_s
        self._forget_runs_before(since)
        busy = 0.0
        ends, data, head = self._win_end, self._win_data, self._win_head
        runs = len(ends)
        first = bisect_right(ends, since, head)  # the first run that ends inside the window
        over = bisect_right(ends, now_s, first)  # runs first..over-1 are over by now_s
        if over == runs:
            # The usual case (runs are disjoint, in time order, and all over by now_s): only the first
            # run can be cut by the window; every later one counts whole. Summed in the same order as the
            # general loop below, so the figures are the same to the last bit.
            if first < runs:
                start = data[_RUN * first]
                busy = ends[first] - (start if start > since else since)
                busy = reduce(add, data[_RUN * first + 1 + _RUN::_RUN], busy)  # busy += each later duration, in C
        else:
            for i in range(head, runs):
                end = ends[i]
                if end > since:
                    busy += min(end, now_s) - max(data[_RUN * i], since)
        # Running totals before run `first` and through run over-1 (see the class docstring).
        tokens_0, pairs_0 = (data[_RUN * first - 2], data[_RUN * first - 1]) if first else self._win_before
        tokens_1, pairs_1 = (data[_RUN * over - 2], data[_RUN * over - 1]) if over else self._win_before
        tokens = int(tokens_1 - tokens_0)
        pairs = pairs_1 - pairs_0
        pf_end, pf_data = self._pf_end, self._pf_data
        pf_first = bisect_right(pf_end, since, self._pf_head)
        pf_over = bisect_right(pf_end, now_s, pf_first)
        first_0, prefill_0, computed_0 = (
            (pf_data[_PREFILL * pf_first - 3], pf_data[_PREFILL * pf_first - 2], pf_data[_PREFILL * pf_first - 1])
            if pf_first else self._pf_before)
        first_1, prefill_1, computed_1 = (
            (pf_data[_PREFILL * pf_over - 3], pf_data[_PREFILL * pf_over - 2], pf_data[_PREFILL * pf_over - 1])
            if pf_over else self._pf_before)
        first_tokens, prefill, computed = int(first_1 - first_0), int(prefill_1 - prefill_0), int(computed_1 - computed_0)
        flops = self._price(tokens - first_tokens, computed, pf_over - pf_first, pairs)
        # The runs the window cuts count their FLOPs in proportion to their time inside it: the one under
        # way at `since` (counted whole above), and any that ends after now_s (not counted above).
        if first < over and data[_RUN * first] < since:
            flops -= self._run_flops(first) * (since - data[_RUN * first]) / data[_RUN * first + 1]
        for i in range(over, runs):
            start, duration = data[_RUN * i], data[_RUN * i + 1]
            if duration > 0.0 and start < now_s:
                flops += self._run_flops(i) * (now_s - max(start, since)) / duration
        return UsageWindow(busy, flops, tokens, tokens - first_tokens, prefill, computed)

    def _run_flops(self, i: int) -> float:
        """FLOPs of the run at window index `i`: the difference of the running totals at it and before
        it. Its prefill entry is the one with its end, if any (a run that prefilled lasts a while, so no
        other run that prefilled ends with it)."""
        data, pf_end, pf_data = self._win_data, self._pf_end, self._pf_data
        tokens_0, pairs_0 = (data[_RUN * i - 2], data[_RUN * i - 1]) if i else self._win_before
        tokens = int(data[_RUN * i + 2] - tokens_0)
        pairs = data[_RUN * i + 3] - pairs_0
        j = bisect_left(pf_end, self._win_end[i], self._pf_head)
        if j < len(pf_end) and pf_end[j] == self._win_end[i]:
            if j:
                first_0, computed_0 = pf_data[_PREFILL * j - 3], pf_data[_PREFILL * j - 1]
            else:
                first_0, _, computed_0 = self._pf_before
            first_tokens = int(pf_data[_PREFILL * j] - first_0)
            computed = int(pf_data[_PREFILL * j + 2] - computed_0)
            return self._price(tokens - first_tokens, computed, 1, pairs)
        return self._price(tokens, 0, 0, pairs)

    def _forget_runs_before(self, since_s: float) -> None:
        """Runs that ended by `since_s` leave the report window (reports ignore them); the arrays are
        compacted now and then, keeping the running totals at the last run dropped. Done when a report
        is made, not per run: a report comes every few seconds, runs a few times per request."""
        ends, data = self._win_end, self._win_data
        head = bisect_right(ends, since_s, self._win_head)
        if head >= 256:
            self._win_before = (data[_RUN * head - 2], data[_RUN * head - 1])
            del ends[:head], data[:_RUN * head]
            head = 0
        self._win_head = head
        pf_end, pf_data = self._pf_end, self._pf_data
        head = bisect_right(pf_end, since_s, self._pf_head)
        if head >= 256:
            at = _PREFILL * (head - 1)
            self._pf_before = (pf_data[at], pf_data[at + 1], pf_data[at + 2])
            self._pf_dropped += head
            del pf_end[:head], pf_data[:_PREFILL * head]
            head = 0
        self._pf_head = head
