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
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from functools import reduce
from operator import add

# Numbers kept per run in the report window: start, duration, output tokens, FLOPs.
_RUN = 4
# Numbers kept per run that prefilled (a general iteration with prefill chunks; fewer than half the runs
# of a busy engine, so they are kept apart): output tokens its prefills sampled (not decode steps'),
# prompt tokens prefilled (prefix-cache hits included), prompt tokens computed (the cache's misses).
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
    (power integrated from `start`, idle draw included), `flops` (arithmetic done, see
    opscale.perf.flops), `output_tokens` (every token sampled, a prefill's first token included),
    `decode_tokens` (those sampled by decode steps: one per decoding sequence per step),
    `prefill_tokens` (prompt tokens a prefill covered, whether computed or served from the prefix
    cache; recomputation after a preemption included) and `prefill_computed_tokens` (those computed:
    the prefix cache's misses).

    The runs of the last `window_s`, for reports, from run `_win_head` on: their ends, in order, and
    `_RUN` numbers a run; the runs that prefilled again, from `_pf_head` on, with `_PREFILL` numbers
    each. Flat arrays of doubles rather than a deque of tuples: a report reads them all, and contiguous
    numbers cost far fewer cache misses than an object per run (token counts are whole numbers far
    below 2**53: exact as doubles); the ends alone, so that the window's edge is a binary search.

    FLOPs and the prefill counts are not added up run by run (a run is the simulator's hot path, and
    they are read once, at the end): each total is what the arrays hold plus what the runs dropped
    from them held (`_dropped_flops`, `_dropped_prefill`), added when they are dropped.
    """

    __slots__ = ("idle_w", "dynamic_w", "window_s", "busy_s", "energy_j", "output_tokens", "_accounted_s",
                 "_win_end", "_win_data", "_win_head", "_pf_end", "_pf_data", "_pf_head", "_dropped_flops",
                 "_dropped_prefill")

    def __init__(self, idle_w: float, dynamic_w: float, window_s: float) -> None:
        self.idle_w = idle_w
        self.dynamic_w = dynamic_w  # the draw above idle at full busy
        self.window_s = window_s
        self.busy_s = 0.0
        self.energy_j = 0.0
        self.output_tokens = 0
        self._accounted_s = 0.0  # energy is integrated up to here
        self._win_end = array("d")
        self._win_data = array("d")
        self._win_head = 0
        self._pf_end = array("d")
        self._pf_data = array("d")
        self._pf_head = 0
        self._dropped_flops = 0.0
        self._dropped_prefill = [0.0] * _PREFILL

    @property
    def flops(self) -> float:
        return self._dropped_flops + sum(self._win_data[3::_RUN])

    @property
    def decode_tokens(self) -> int:
        return self.output_tokens - self._prefill_total(0)

    @property
    def prefill_tokens(self) -> int:
        return self._prefill_total(1)

    @property
    def prefill_computed_tokens(self) -> int:
        return self._prefill_total(2)

    def _prefill_total(self, column: int) -> int:
        return int(self._dropped_prefill[column] + sum(self._pf_data[column::_PREFILL]))

    def start(self, now_s: float) -> None:
        """Integrate energy from `now_s` (the engine's first call)."""
        self._accounted_s = now_s

    def idle_until(self, now_s: float) -> None:
        """Nothing ran since the last accounted instant: idle draw up to `now_s`."""
        self.energy_j += self.idle_w * (now_s - self._accounted_s)
        self._accounted_s = now_s

    def record_run(self, start_s: float, end_s: float, busy_s: float, tokens: int, flops: float,
                   prefill_tokens: int = 0, computed_tokens: int = 0, first_tokens: int = 0) -> None:
        """A run of iterations from `start_s` to `end_s`, the GPUs busy `busy_s` of it (for power): it
        sampled `tokens` output tokens and did `flops`. A run that prefilled also says how many prompt
        tokens it covered (`prefill_tokens`), how many of them it computed (`computed_tokens`; the rest
        came from the prefix cache) and how many of its output tokens the prefills it completed sampled
        (`first_tokens`; the rest came from decode steps)."""
        # Idle draw from the last accounted instant to the start, then the run's own draw.
        self.energy_j += self.idle_w * (end_s - self._accounted_s) + self.dynamic_w * busy_s
        self._accounted_s = end_s
        duration_s = end_s - start_s
        self.busy_s += duration_s
        self.output_tokens += tokens
        ends = self._win_end
        ends.append(end_s)
        self._win_data.extend((start_s, duration_s, tokens, flops))
        if prefill_tokens:
            self._pf_end.append(end_s)
            self._pf_data.extend((first_tokens, prefill_tokens, computed_tokens))
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
        self._dropped_flops += flops * elapsed_s / run_s

    def window(self, now_s: float) -> UsageWindow:
        """The runs recorded, over the window that ends at `now_s`: busy time and FLOPs of the part of
        each run inside the window (FLOPs in proportion to time), tokens of the runs over by now_s."""
        since = now_s - self.window_s
        self._forget_runs_before(since)
        busy = flops = 0.0
        tokens = 0
        ends, data, head = self._win_end, self._win_data, self._win_head
        runs = len(ends)
        if runs > head and ends[-1] <= now_s:
            # The usual case (runs are disjoint, in time order, and all over by now_s): only the first
            # run ending after `since` can be cut by the window; every later one counts whole. Busy
            # time is summed in the same order as the general loop below, so the figures are the same
            # to the last bit.
            first = bisect_right(ends, since, head)
            if first < runs:
                at = _RUN * first
                start = data[at]
                busy = ends[first] - (start if start > since else since)
                flops = data[at + 3] if start >= since else data[at + 3] * busy / data[at + 1]
                busy = reduce(add, data[at + 1 + _RUN::_RUN], busy)  # busy += each later duration, in C
                flops = reduce(add, data[at + 3 + _RUN::_RUN], flops)
                tokens = int(sum(data[at + 2::_RUN]))
        else:
            for i in range(head, runs):
                end = ends[i]
                if end > since:
                    at = _RUN * i
                    start, duration = data[at], data[at + 1]
                    inside = min(end, now_s) - max(start, since)
                    busy += inside
                    flops += data[at + 3] * inside / duration if 0.0 < duration and inside < duration else data[at + 3]
                    if end <= now_s:
                        tokens += int(data[at + 2])
        pf_end, pf_data = self._pf_end, self._pf_data
        # Runs over by now_s: all of them but in the rare case above (bisect_right keeps the ends <= now_s).
        at = _PREFILL * bisect_right(pf_end, since, self._pf_head)
        stop = _PREFILL * bisect_right(pf_end, now_s, self._pf_head)
        first_tokens = int(sum(pf_data[at:stop:_PREFILL]))
        prefill = int(sum(pf_data[at + 1:stop:_PREFILL]))
        computed = int(sum(pf_data[at + 2:stop:_PREFILL]))
        return UsageWindow(busy, flops, tokens, tokens - first_tokens, prefill, computed)

    def _forget_runs_before(self, since_s: float) -> None:
        """Runs that ended by `since_s` leave the report window (reports ignore them); the arrays are
        compacted now and then, what they held of the totals kept. Done when a report is made, not per
        run: a report comes every few seconds, runs a few times per request."""
        ends = self._win_end
        head = bisect_right(ends, since_s, self._win_head)
        if head >= 256:
            cut = _RUN * head
            self._dropped_flops += sum(self._win_data[3:cut:_RUN])
            del ends[:head], self._win_data[:cut]
            head = 0
        self._win_head = head
        pf_end = self._pf_end
        head = bisect_right(pf_end, since_s, self._pf_head)
        if head >= 256:
            data, dropped = self._pf_data, self._dropped_prefill
            cut = _PREFILL * head
            for column in range(_PREFILL):
                dropped[column] += sum(data[column:cut:_PREFILL])
            del pf_end[:head], data[:cut]
            head = 0
        self._pf_head = head
