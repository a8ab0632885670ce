"""`opscale loadgen`: replay a trace against an OpenAI-compatible endpoint, and compare latency reports.

Thin: parses options and calls opscale_loadgen (the `loadgen/` folder), which owns the network code;
imports happen inside the commands so `opscale --help` stays fast. Bad input (a missing file, a bad URL,
an endpoint that refuses connections, a bad trace row) exits with code 2 and one line naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opscale.cli.errors import fail as _fail

app = typer.Typer(help="Replay traces against an OpenAI-compatible endpoint; compare latency reports.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command()
def replay(
    trace: Annotated[Path, typer.Argument(help="Trace file to replay (sorted by arrival)")],
    url: Annotated[str, typer.Option(help="Base URL of the endpoint: opscale's router or vLLM, "
                                          "e.g. http://127.0.0.1:8000")],
    format: Annotated[str | None, typer.Option("--format", help="Trace format (default: from the file)")] = None,
    compress: Annotated[float, typer.Option(help="Divide the trace's time by this factor (10: ten times faster)")] = 1.0,
    window: Annotated[str | None, typer.Option(help="Replay only arrivals in START:END trace seconds "
                                                    "(either side may be empty)")] = None,
    max_requests: Annotated[int | None, typer.Option(help="Replay at most this many requests of the window")] = None,
    concurrency_limit: Annotated[int | None, typer.Option(
        help="At most this many requests in flight; a send that finds none free waits, and its lateness "
             "is reported (default: no limit, purely open loop)")] = None,
    out: Annotated[Path, typer.Option(help="Folder for report.json and requests.csv")] = Path("loadgen-out"),
    api: Annotated[str, typer.Option(help="Endpoint to call: chat (/v1/chat/completions) or completions")] = "chat",
    timeout: Annotated[float, typer.Option(help="Seconds a request may take from send to its last token")] = 300.0,
    model: Annotated[str | None, typer.Option(help="Send every request to this model instead of the trace's")] = None,
    tiers: Annotated[Path | None, typer.Option(help="YAML tiers to judge SLOs by (default: opscale's tiers)")] = None,
    extras: Annotated[bool, typer.Option(help="Send opscale_tier, the x-opscale-region header and vLLM's "
                                              "ignore_eos; turn off for a strict OpenAI server")] = True,
    token_gaps: Annotated[bool, typer.Option(help="Write every inter-token gap to requests.csv")] = False,
    drain: Annotated[float, typer.Option(help="After Ctrl-C, seconds to wait for answers in flight")] = 30.0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
    api_key: Annotated[str | None, typer.Option(envvar="OPENAI_API_KEY", show_default=False,
                                                help="Bearer token for the endpoint, if it needs one")] = None,
) -> None:
    """Replay TRACE open-loop against URL: each request is sent at its (compressed) trace time, streaming,
    whatever earlier requests are doing. Writes report.json and requests.csv into OUT; Ctrl-C stops
    sending and still writes the (partial) report."""
    from opscale_loadgen.client import EndpointError
    from opscale_loadgen.prompts import ApiKind
    from opscale_loadgen.replay import ReplayConfig, run_replay
    from opscale_loadgen.report_view import print_report_summary
    from opscale_loadgen.tiers import load_tiers
    from opscale_loadgen.trace_source import TraceWindow

    if not trace.exists():
        raise _fail(f"trace file {trace} does not exist")
    try:
        api_kind = ApiKind(api)
    except ValueError:
        raise _fail(f"--api {api!r}: choose one of: {', '.join(k.value for k in ApiKind)}") from None
    try:
        config = ReplayConfig(
            trace=trace, url=url, out=out, format=format, compress=compress, window=TraceWindow.parse(window),
            max_requests=max_requests, concurrency_limit=concurrency_limit, api=api_kind, timeout_s=timeout,
            model=model, extras=extras, tiers=load_tiers(tiers), token_gaps=token_gaps, drain_s=drain,
            progress=progress, api_key=api_key)
        result = run_replay(config)
    except (EndpointError, ValueError) as exc:
        raise _fail(str(exc)) from None
    print_report_summary(result.report, result.report_path, result.requests_path)


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="First report: a loadgen report.json or a simulator result.json")],
    b: Annotated[Path, typer.Argument(help="Second report, shown against the first")],
) -> None:
    """Print two latency reports side by side, per tier, with B's change relative to A."""
    from rich.console import Console

    from opscale_loadgen.compare import ReportFileError, comparison_table, load_report

    try:
        report_a, report_b = load_report(a), load_report(b)
    except ReportFileError as exc:
        raise _fail(str(exc)) from None
    Console().print(comparison_table(report_a, report_b, str(a), str(b)))
