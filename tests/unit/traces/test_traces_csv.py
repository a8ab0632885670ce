"""The CSV trace format: round trips, and every kind of bad line named by file, line and field."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import pytest

from opscale.model import Request
from opscale.traces import (
    ReadOptions,
    ReadStats,
    StreamSpec,
    SyntheticWorkloadConfig,
    TraceFormatError,
    generate_requests,
    read_csv_trace,
    write_csv_trace,
)

pytestmark = pytest.mark.unit

HEADER = "arrival_s,model,tier,region,prompt_tokens,output_tokens,request_id\n"


def write(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def synthetic(n: int) -> list[Request]:
    cfg = SyntheticWorkloadConfig(duration_s=1e6, streams=(StreamSpec(model="Llama-3-8B", region="eu", base_rps=3),
                                                           StreamSpec(model="Qwen2-7B", region="us", base_rps=1)))
    return list(itertools.islice(generate_requests(cfg), n))


@pytest.mark.parametrize("name", ["trace.csv", "trace.csv.gz"])
def test_write_then_read_gives_the_same_requests(tmp_path: Path, name: str) -> None:
    requests = synthetic(500)
    path = tmp_path / name
    assert write_csv_trace(path, requests) == 500
    assert list(read_csv_trace(path)) == requests
    if name.endswith(".gz"):
        with gzip.open(path, "rt") as handle:
            assert handle.readline() == HEADER


def test_columns_in_any_order_extras_ignored_ids_defaulted(tmp_path: Path) -> None:
    path = write(tmp_path, "note,output_tokens,prompt_tokens,region,tier,model,arrival_s\n"
                           "hello,10,100,eu,interactive,Llama-3-8B,0.5\n"
                           "\n"
                           "x,20,200,us,batch,Qwen2-7B,1.5\n")
    requests = list(read_csv_trace(path))
    assert requests == [
        Request("trace-0", "Llama-3-8B", "interactive", "eu", 0.5, 100, 10),
        Request("trace-1", "Qwen2-7B", "batch", "us", 1.5, 200, 20),
    ]


def test_empty_request_id_gets_the_default(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "0,m,t,eu,1,1,\n")
    assert next(read_csv_trace(path)).request_id == "trace-0"


@pytest.mark.parametrize(("row", "message"), [
    ("abc,m,t,eu,10,10,a", "field 'arrival_s': expected a number, got 'abc'"),
    ("-1,m,t,eu,10,10,a", "field 'arrival_s': expected a finite number >= 0, got '-1'"),
    ("nan,m,t,eu,10,10,a", "field 'arrival_s': expected a finite number >= 0, got 'nan'"),
    ("1,m,t,eu,0,10,a", "field 'prompt_tokens': expected an integer >= 1, got '0'"),
    ("1,m,t,eu,10,1.5,a", "field 'output_tokens': expected an integer >= 1, got '1.5'"),
    ("1,m,t,eu,ten,10,a", "field 'prompt_tokens': expected an integer >= 1, got 'ten'"),
    ("1, ,t,eu,10,10,a", "field 'model': must not be empty"),
    ("1,m,t,eu,10,10,first", "field 'request_id': 'first' appears twice"),
    ("1,m,t,eu,10", "expected at least 7 columns, got 5"),
])
def test_a_bad_value_names_file_line_and_field(tmp_path: Path, row: str, message: str) -> None:
    path = write(tmp_path, HEADER + "0,m,t,eu,10,10,first\n" + row + "\n")
    with pytest.raises(TraceFormatError, match=f"^{path}:3: {message}".replace("(", r"\(").replace(")", r"\)")):
        list(read_csv_trace(path))


def test_rows_before_a_bad_line_are_streamed(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "0,m,t,eu,10,10,a\n1,m,t,eu,10,10,b\n2,m,t,eu,x,10,c\n")
    reader = read_csv_trace(path)
    assert [next(reader).request_id, next(reader).request_id] == ["a", "b"]
    with pytest.raises(TraceFormatError, match=":4: field 'prompt_tokens'"):
        next(reader)


def test_unsorted_arrivals_are_refused_with_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "0,m,t,eu,10,10,a\n\n5,m,t,eu,10,10,b\n4.5,m,t,eu,10,10,c\n")
    with pytest.raises(TraceFormatError, match=r":5: field 'arrival_s': 4\.5 s is before the previous record's 5\.0 s"):
        list(read_csv_trace(path))


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "0,m,t,eu,10,10,a\n1,m,t,eu,10,10,a\n")
    with pytest.raises(TraceFormatError, match=":3: field 'request_id': 'a' appears twice"):
        list(read_csv_trace(path))


def test_an_id_is_taken_only_by_an_accepted_row(tmp_path: Path) -> None:
    # c at 4.0 is out of order and skipped, so the later c is its first; "trace-3" is the default id of
    # the fourth row, which an explicit id may not repeat
    path = write(tmp_path, HEADER + "0,m,t,eu,1,1,a\n5,m,t,eu,1,1,b\n4,m,t,eu,1,1,c\n6,m,t,eu,1,1,\n"
                                    "7,m,t,eu,1,1,c\n8,m,t,eu,1,1,trace-3\n")
    stats = ReadStats()
    kept = list(read_csv_trace(path, ReadOptions(skip_invalid=True, stats=stats)))
    assert [r.request_id for r in kept] == ["a", "b", "trace-3", "c"]
    assert stats.invalid == 2 and "field 'request_id': 'trace-3' appears twice" in stats.examples[1]


@pytest.mark.parametrize(("text", "message"), [
    ("", ":1: empty file"),
    ("arrival_s,model,tier,region,prompt_tokens\n", ":1: header lacks column\\(s\\) 'output_tokens'"),
    ("0,m,t,eu,10,10\n", ":1: header lacks column"),
    ("arrival_s,model,tier,region,prompt_tokens,output_tokens,model\n", ":1: column 'model' appears more than once"),
])
def test_a_bad_header_is_line_one(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TraceFormatError, match=message):
        list(read_csv_trace(write(tmp_path, text)))


def test_unreadable_files_are_trace_errors(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="cannot open"):
        list(read_csv_trace(tmp_path / "missing.csv"))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(HEADER.encode() + b"\xff\xfe,\x00\n")
    with pytest.raises(TraceFormatError, match="not UTF-8"):
        list(read_csv_trace(binary))


def test_writing_an_unsorted_trace_is_refused(tmp_path: Path) -> None:
    a, b = synthetic(2)
    with pytest.raises(ValueError, match=f"request {a.request_id}: arrival_s"):
        write_csv_trace(tmp_path / "t.csv", [b, a])
