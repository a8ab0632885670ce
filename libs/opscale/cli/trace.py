"""`opscale trace`: summarise, convert and fetch workload traces. Thin: parses options, then calls
opscale.traces. Bad input (missing file, unknown format, corrupt line) is one red line on stderr and
exit code 2."""

from __future__ import annotations

import hashlib
import json
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from opscale.cli.errors import fail as _fail

if TYPE_CHECKING:
    from opscale.model import Request
    from opscale.traces import ColumnMapping, ReadStats, TraceSummary

trace_app = typer.Typer(help="Summarise, convert and fetch workload traces.", no_args_is_help=True,
                        add_completion=False, pretty_exceptions_enable=False)

FormatOption = Annotated[str | None, typer.Option(
    "--format", help="Trace format (azure, azure2024, burstgpt, mooncake, csv, jsonl, mapped-csv, mapped-jsonl); "
                     "detected from the file when not given")]
MappingOption = Annotated[Path | None, typer.Option(
    help="YAML or JSON column mapping for any CSV/JSONL trace (keys: arrival, arrival_unit, prompt_tokens, "
         "output_tokens, model, tier, region, request_id, prefix_hashes, rebase)")]
SkipOption = Annotated[bool, typer.Option(
    "--skip-invalid", help="Skip corrupt lines (counted and reported) instead of stopping at the first")]

_FETCH_TIMEOUT_S = 60.0
_CHUNK_BYTES = 1 << 20


@trace_app.command()
def stats(
    path: Annotated[Path, typer.Argument(help="Trace file (gzip is read transparently)")],
    format: FormatOption = None,
    mapping: MappingOption = None,
    out: Annotated[Path | None, typer.Option(help="Folder for stats.json and rate.png")] = None,
    skip_invalid: SkipOption = False,
    bin_s: Annotated[float, typer.Option(help="Bin width for the peak rate and the plot, seconds", min=1e-3)] = 60.0,
) -> None:
    """Count requests and summarise a trace: span, mean and peak rate, token p50/p90/p99, invalid lines."""
    from opscale.traces import ReadStats, summarize

    read_stats = ReadStats()
    try:
        requests = _open_trace(path, format, mapping, skip_invalid, read_stats)
        summary = summarize(_progress(requests, f"reading {path.name}"), bin_s=bin_s, stats=read_stats)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    _print_summary(path, summary)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "stats.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
        _plot_rate(summary, out / "rate.png", title=path.name)
        typer.echo(f"wrote {out / 'stats.json'} and {out / 'rate.png'}")


@trace_app.command()
def convert(
    path: Annotated[Path, typer.Argument(help="Trace file to read")],
    out: Annotated[Path, typer.Argument(help="File to write (.gz compresses)")],
    format: FormatOption = None,
    mapping: MappingOption = None,
    to: Annotated[str, typer.Option(help="Output format: csv (opscale CSV) or jsonl (keeps prefix hashes)")] = "csv",
    skip_invalid: SkipOption = False,
    window: Annotated[str | None, typer.Option(
        help="START:END seconds; keep arrivals in [START, END) and move START to 0")] = None,
    compress: Annotated[float | None, typer.Option(help="Play the trace this many times faster")] = None,
    scale: Annotated[float | None, typer.Option(
        help="Multiply the arrival rate: < 1 thins, > 1 superposes time-shifted copies")] = None,
    assign: Annotated[list[str] | None, typer.Option(
        help="FIELD=VALUE:WEIGHT,VALUE:WEIGHT (FIELD: model, tier, region); repeatable, e.g. "
             "--assign region=eu-west:2,us-east:1")] = None,
    rule: Annotated[list[str] | None, typer.Option(
        help="FIELD=VALUE if METRIC OP NUMBER, applied after --assign, first match wins; repeatable, e.g. "
             "--rule 'tier=batch if prompt_tokens>4096'")] = None,
    shift_region: Annotated[list[str] | None, typer.Option(
        help="REGION=OFFSET_S: rotate that region's requests by OFFSET_S modulo --period-s; repeatable")] = None,
    period_s: Annotated[float, typer.Option(help="Period of the trace for --shift-region, seconds")] = 86_400.0,
    seed: Annotated[int, typer.Option(help="Seed of --scale and --assign draws")] = 0,
) -> None:
    """Read a trace, apply transforms (in the order window, compress, assign, rule, shift-region, scale)
    and write it in opscale's CSV or JSONL format."""
    from opscale.traces import ReadStats, scale_rate, write_csv_trace, write_jsonl_trace

    writers = {"csv": write_csv_trace, "jsonl": write_jsonl_trace}
    if to not in writers:
        raise _fail(f"--to must be csv or jsonl, got {to!r}")
    read_stats = ReadStats()
    try:
        pipeline = _pipeline(path, format, mapping, skip_invalid, read_stats, window=window, compress=compress,
                             assign=assign or [], rules=rule or [], seed=seed)
        if shift_region:
            from opscale.traces import shift_regions

            offsets = _region_offsets(shift_region)
            requests: Iterable[Request] = shift_regions(pipeline, offsets, period_s)
        else:
            requests = pipeline()
        if scale is not None:  # last: shifted copies may run past the period that --shift-region rotates
            requests = scale_rate(requests, scale, seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        count = writers[to](out, _progress(requests, f"converting {path.name}"))
    except ValueError as exc:
        out.unlink(missing_ok=True)  # a half-written trace would pass for a whole one
        raise _fail(str(exc)) from None
    skipped = f"; {read_stats.invalid} invalid line(s) skipped" if read_stats.invalid else ""
    failed = f"; {read_stats.failed} failed request(s) skipped" if read_stats.failed else ""
    typer.echo(f"wrote {count} requests to {out}{skipped}{failed}")


@trace_app.command()
def fetch(
    name: Annotated[str, typer.Argument(help="Dataset: azure2023, azure2024, burstgpt, mooncake")],
    dest: Annotated[Path, typer.Option(help="Folder to download into")] = Path("traces"),
) -> None:
    """Download a public trace from its published location and check its SHA-256 where it is known."""
    from opscale.traces.catalog import dataset

    try:
        chosen = dataset(name)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    dest.mkdir(parents=True, exist_ok=True)
    typer.echo(f"{chosen.name}: {chosen.description} (licence {chosen.licence}; read with --format {chosen.format})")
    for item in chosen.files:
        target = dest / item.name
        try:
            digest = _download(item.urls, target)
        except OSError as exc:
            raise _fail(f"cannot download {item.name}: {exc}") from None
        if item.sha256 is None:
            typer.secho(f"{target}: sha256 {digest} (unverified: no known checksum)", fg=typer.colors.YELLOW)
        elif digest != item.sha256:
            target.unlink(missing_ok=True)
            raise _fail(f"{item.name}: sha256 {digest} does not match the known {item.sha256}; file removed")
        else:
            typer.echo(f"{target}: sha256 verified")


def _open_trace(path: Path, fmt: str | None, mapping_path: Path | None, skip_invalid: bool,
                read_stats: ReadStats) -> Iterator[Request]:
    from opscale.traces import ReadOptions, read_trace

    if not path.exists():
        raise ValueError(f"trace file {path} does not exist")
    mapping = _load_mapping(mapping_path) if mapping_path is not None else None
    return read_trace(path, fmt, ReadOptions(skip_invalid=skip_invalid, stats=read_stats), mapping)


def _load_mapping(path: Path) -> ColumnMapping:
    import yaml
    from pydantic import ValidationError

    from opscale.traces import ColumnMapping

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read column mapping {path}: {exc}") from None
    try:
        return ColumnMapping.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'mapping'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"column mapping {path}: {problems}") from None


def _pipeline(path: Path, fmt: str | None, mapping: Path | None, skip_invalid: bool, read_stats: ReadStats, *,
              window: str | None, compress: float | None, assign: list[str],
              rules: list[str], seed: int) -> Callable[[], Iterator[Request]]:
    """A factory of the transformed stream: --shift-region reads it more than once, and every pass
    must give the same requests (all draws are seeded)."""
    from opscale.traces import (
        assign_by_rules,
        assign_by_weights,
        compress_time,
        parse_rule,
    )
    from opscale.traces.window import TraceWindow

    span = TraceWindow.parse(window)
    weights = [parse_assign(spec) for spec in assign]
    parsed_rules = [parse_rule(r) for r in rules]
    passes = [0]

    def build() -> Iterator[Request]:
        # only the first pass counts lines, so the report is not multiplied by the passes
        from opscale.traces import ReadStats

        stats_for_pass = read_stats if passes[0] == 0 else ReadStats()
        passes[0] += 1
        stream: Iterator[Request] = _open_trace(path, fmt, mapping, skip_invalid, stats_for_pass)
        stream = span.select(stream, rebase=True)
        if compress is not None:
            stream = compress_time(stream, compress)
        for k, (field, values) in enumerate(weights):
            stream = assign_by_weights(stream, field, values, seed + 1 + k)  # type: ignore[arg-type]
        if parsed_rules:
            stream = assign_by_rules(stream, parsed_rules)
        return stream

    return build


def parse_assign(spec: str) -> tuple[str, dict[str, float]]:
    field, _, values = spec.partition("=")
    if not values:
        raise ValueError(f"--assign must be FIELD=VALUE:WEIGHT,..., got {spec!r}")
    weights: dict[str, float] = {}
    for item in values.split(","):
        value, _, weight = item.partition(":")
        try:
            weights[value.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--assign {spec!r}: weight {weight!r} of {value!r} is not a number") from None
    return field.strip(), weights


def _region_offsets(specs: list[str]) -> dict[str, float]:
    offsets: dict[str, float] = {}
    for spec in specs:
        region, _, offset = spec.partition("=")
        try:
            offsets[region.strip()] = float(offset)
        except ValueError:
            raise ValueError(f"--shift-region must be REGION=OFFSET_S, got {spec!r}") from None
    return offsets


def _progress(requests: Iterable[Request], label: str) -> Iterator[Request]:
    """Count requests on a transient progress line on stderr (long traces take minutes)."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield from requests
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,} requests"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        for n, r in enumerate(requests, start=1):
            if n % 10_000 == 0:
                bar.update(task, completed=n)
            yield r


def _print_summary(path: Path, s: TraceSummary) -> None:
    def tokens(p: dict[str, float | None]) -> str:
        return " / ".join("-" if p[k] is None else f"{p[k]:,.0f}" for k in ("p50", "p90", "p99"))

    mean = "-" if s.mean_rate_rps is None else f"{s.mean_rate_rps:.3f}"
    lines = [
        f"trace            {path}",
        f"requests         {s.requests:,}",
        f"duration         {s.duration_s:,.1f} s",
        f"mean rate        {mean} req/s",
        f"peak rate        {s.peak_rate_rps:.3f} req/s (per {s.bin_s:g} s bin)",
        f"prompt p50/90/99 {tokens(s.prompt_tokens)} tokens",
        f"output p50/90/99 {tokens(s.output_tokens)} tokens",
        f"models           {', '.join(f'{k} ({v:,})' for k, v in list(s.models.items())[:5])}",
        f"invalid lines    {s.invalid_records or 0:,} skipped",
    ]
    if s.failed_records:
        lines.append(f"failed requests  {s.failed_records:,} skipped (the format marks them failed)")
    typer.echo("\n".join(lines))
    for example in s.invalid_examples:
        typer.secho(f"  skipped: {example}", fg=typer.colors.YELLOW, err=True)


def _plot_rate(summary: TraceSummary, target: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    start_s = summary.first_arrival_s or 0.0
    xs = [start_s + k * summary.bin_s for k in range(len(summary.rate_rps))]
    ax.step(xs, summary.rate_rps, where="post", linewidth=1.0)
    ax.set_xlabel("arrival time (s)")
    ax.set_ylabel(f"requests/s (per {summary.bin_s:g} s)")
    ax.set_title(f"{title}: {summary.requests:,} requests")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def _download(urls: tuple[str, ...], target: Path) -> str:
    """Stream the first URL that answers into `target` (through a temporary file, so a failed
    download leaves nothing behind) with a progress bar; return the SHA-256 hex digest."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    errors: list[str] = []
    for url in urls:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=_FETCH_TIMEOUT_S) as response:  # noqa: S310 - fixed https URLs
                total = int(response.headers.get("Content-Length") or 0) or None
                with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp, \
                        Progress(*Progress.get_default_columns()[:1], BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn()) as bar:
                    task = bar.add_task(target.name, total=total)
                    try:
                        while chunk := response.read(_CHUNK_BYTES):
                            tmp.write(chunk)
                            digest.update(chunk)
                            bar.advance(task, len(chunk))
                    except BaseException:
                        Path(tmp.name).unlink(missing_ok=True)
                        raise
                Path(tmp.name).replace(target)
                return digest.hexdigest()
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
    raise OSError("; ".join(errors) or "no URL")
