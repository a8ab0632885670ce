"""Workload traces: readers of trace files and seeded synthetic generators, all yielding `Request`s
sorted by arrival, lazily."""

from opscale.traces.csv_format import TraceFormatError, read_csv_trace, write_csv_trace
from opscale.traces.synthetic import (
    LengthDistribution,
    StreamSpec,
    SyntheticWorkloadConfig,
    generate_requests,
    rate_rps,
)

__all__ = [
    "LengthDistribution", "StreamSpec", "SyntheticWorkloadConfig", "TraceFormatError", "generate_requests",
    "rate_rps", "read_csv_trace", "write_csv_trace",
]
