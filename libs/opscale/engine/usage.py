"""What one simulated engine has done over time: busy time, energy, output tokens, and the recent runs
that its load reports are computed from.

The engine (opscale.engine.sim) tells the meter about every run of iterations it commits and every
stretch it sits idle; the meter integrates power (idle draw always, dynamic draw in proportion to the
GPUs' busy time) and keeps the runs of the last report window. It decides nothing and reads no clock:
every call carries its times.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from functools import reduce
from operator import add


class UsageMeter:
    """Accounting, as of the engine's last step boundary: `busy_s` (time in iterations), `energy_j`
    (power integrated from `start`, idle draw included) and `output_tokens`.

    The runs of the last `window_s`, for reports, from run `_win_head` on: their ends, in order, and
    their start, duration and output tokens, three numbers a run. Flat arrays of doubles rather than a
    deque of tuples: a report reads them all, and contiguous numbers cost far fewer cache misses than
    an object per run (token counts are whole numbers far below 2**53: exact as doubles); the ends
    alone, so that the window's edge is a binary search.
    """

    __slots__ = ("idle_w", "dynamic_w", "window_s", "busy_s", "energy_j", "output_tokens", "_accounted_s",
                 "_win_end", "_win_data", "_win_head")

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

    def start(self, now_s: float) -> None:
        """Integrate energy from `now_s` (the engine's first call)."""
        self._accounted_s = now_s

    def idle_until(self, now_s: float) -> None:
        """Nothing ran since the last accounted instant: idle draw up to `now_s`."""
        self.energy_j += self.idle_w * (now_s - self._accounted_s)
        self._accounted_s = now_s

    def record_run(self, start_s: float, end_s: float, busy_s: float, tokens: int) -> None:
        """A run of iterations from `start_s` to `end_s`, the GPUs busy `busy_s` of it, made `tokens`."""
        # Idle draw from the last accounted instant to the start, then the run's own draw.
        self.energy_j += self.idle_w * (end_s - self._accounted_s) + self.dynamic_w * busy_s
        self._accounted_s = end_s
        duration_s = end_s - start_s
        self.busy_s += duration_s
        self.output_tokens += tokens
        ends = self._win_end
        ends.append(end_s)
        self._win_data.extend((start_s, duration_s, tokens))
        if len(ends) >= 4096:  # an engine nobody asks for reports: keep the window bounded all the same
            self._forget_runs_before(end_s - self.window_s)

    def record_interrupted(self, start_s: float, now_s: float, run_s: float, busy_s: float) -> None:
        """A run of `run_s` (busy `busy_s`) from `start_s`, stopped at `now_s`: it drew its own power
        until then; its outputs are lost, so it counts no tokens and no report sees it."""
        elapsed_s = now_s - start_s
        self.energy_j += self.idle_w * (now_s - self._accounted_s) + self.dynamic_w * busy_s * elapsed_s / run_s
        self._accounted_s = now_s
        self.busy_s += elapsed_s

    def window(self, now_s: float) -> tuple[float, int]:
        """Busy time and output tokens of the runs recorded, over the window that ends at `now_s`: busy
        time of each run inside the window, tokens of the runs over by now_s."""
        since = now_s - self.window_s
        self._forget_runs_before(since)
        tokens = 0
        busy = 0.0
        ends, data, head = self._win_end, self._win_data, self._win_head
        runs = len(ends)
        if runs > head and ends[-1] <= now_s:
            # The usual case (runs are disjoint, in time order, and all over by now_s): only the first
            # run ending after `since` can be cut by the window; every later one counts whole. Summed in
            # the same order as the general loop below, so the figures are the same to the last bit.
            first = bisect_right(ends, since, head)
            if first < runs:
                start = data[3 * first]
                busy = ends[first] - (start if start > since else since)
                busy = reduce(add, data[3 * first + 4::3], busy)  # busy += each later duration, in C
                tokens = int(sum(data[3 * first + 2::3]))
        else:
            for i in range(head, runs):
                end = ends[i]
                if end > since:
                    busy += min(end, now_s) - max(data[3 * i], since)
                    if end <= now_s:
                        tokens += int(data[3 * i + 2])
        return busy, tokens

    def _forget_runs_before(self, since_s: float) -> None:
        """Runs that ended by `since_s` leave the report window (reports ignore them); the arrays are
        compacted now and then. Done when a report is made, not per run: a report comes every few
        seconds, runs a few times per request."""
        ends = self._win_end
        head = bisect_right(ends, since_s, self._win_head)
        if head >= 256:
            del ends[:head], self._win_data[:3 * head]
            head = 0
        self._win_head = head
