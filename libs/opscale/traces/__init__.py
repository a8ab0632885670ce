"""Workload traces: readers of trace files, transforms, and seeded generators (synthetic and
ServeGen), all yielding `Request`s sorted by arrival, lazily."""

from opscale.traces.azure import read_azure_trace
from opscale.traces.burstgpt import read_burstgpt_trace
from opscale.traces.csv_format import read_csv_trace, write_csv_trace
from opscale.traces.jsonl_format import read_jsonl_trace, write_jsonl_trace
from opscale.traces.mapped import ColumnMapping, read_mapped_csv, read_mapped_jsonl
from opscale.traces.mooncake import read_mooncake_trace
from opscale.traces.reading import ReadOptions, ReadStats, RequestLabels, TraceFormatError
from opscale.traces.registry import TraceFormat, detect_format, read_trace, trace_format
from opscale.traces.servegen import ServeGenConfig, generate_servegen_requests, servegen_rate_series
from opscale.traces.summary import TraceSummary, summarize
from opscale.traces.synthetic import (
    LengthDistribution,
    StreamSpec,
    SyntheticWorkloadConfig,
    generate_requests,
    rate_rps,
)
from opscale.traces.transforms import (
    AssignRule,
    assign_by_rules,
    assign_by_weights,
    compress_time,
    parse_rule,
    scale_rate,
    shift_regions,
    thin,
    time_window,
)
from opscale.traces.window import TraceWindow

__all__ = [
    "AssignRule", "ColumnMapping", "LengthDistribution", "ReadOptions", "ReadStats", "RequestLabels",
    "ServeGenConfig", "StreamSpec", "SyntheticWorkloadConfig", "TraceFormat", "TraceFormatError", "TraceSummary", "TraceWindow",
    "assign_by_rules", "assign_by_weights", "compress_time", "detect_format", "generate_requests",
    "generate_servegen_requests", "parse_rule", "rate_rps", "read_azure_trace", "read_burstgpt_trace",
    "read_csv_trace", "read_jsonl_trace", "read_mapped_csv", "read_mapped_jsonl", "read_mooncake_trace",
    "read_trace", "scale_rate", "servegen_rate_series", "shift_regions", "summarize", "thin", "time_window",
    "trace_format", "write_csv_trace", "write_jsonl_trace",
]
