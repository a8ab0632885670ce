"""Trace readers: the real public traces (when ../shared/data is present), fixtures for the formats
with no copy here, format detection, and corrupt lines reported by file and line or counted."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from _paths import SHARED_DATA

from opscale.traces import (
    ColumnMapping,
    ReadOptions,
    ReadStats,
    RequestLabels,
    TraceFormat,
    TraceFormatError,
    detect_format,
    read_trace,
    write_jsonl_trace,
)

pytestmark = pytest.mark.unit

DATA = SHARED_DATA


def data_file(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"shared data {relative} is absent")
    return path


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("name", "rows", "span_s"), [("code", 8819, 3436), ("conv", 19366, 3502)])
def test_azure_2023_counts_match_the_data_readme(name: str, rows: int, span_s: int) -> None:
    path = data_file(f"azure_llm_2023/AzureLLMInferenceTrace_{name}.csv")
    assert detect_format(path) is TraceFormat.AZURE
    stats = ReadStats()
    requests = list(read_trace(path, options=ReadOptions(stats=stats)))
    assert (len(requests), stats.records, stats.invalid) == (rows, rows, 0)
    assert requests[0].arrival_s == 0.0
    assert round(requests[-1].arrival_s) == span_s
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(requests, requests[1:], strict=False))
    assert len({r.request_id for r in requests}) == rows


@pytest.mark.parametrize("name", ["conversation_trace_head2000.jsonl", "synthetic_trace_head2000.jsonl"])
def test_mooncake_samples_have_2000_requests_with_prefix_blocks(name: str) -> None:
    path = data_file(f"samples/mooncake_fast25/{name}")
    assert detect_format(path) is TraceFormat.MOONCAKE
    requests = list(read_trace(path))
    assert len(requests) == 2000
    first = json.loads(path.read_text().splitlines()[0])
    assert requests[0].prefix_hashes == tuple(first["hash_ids"])
    assert requests[0].arrival_s == first["timestamp"] / 1000


AZURE_2024 = ("TIMESTAMP,ContextTokens,GeneratedTokens\n"
              "2024-05-10 00:00:00.009930+00:00,4808,10\n"
              "2024-05-10 00:00:01.509930+00:00,3180,8\n"
              "2024-05-10 02:00:02.009930+02:00,100,1\n")


def test_azure_2024_fixture_gzip_and_zone_offsets(tmp_path: Path) -> None:
    path = write(tmp_path, "AzureLLMInferenceTrace_code_1week.csv.gz", AZURE_2024)
    assert detect_format(path) is TraceFormat.AZURE_2024
    labels = RequestLabels(model="Llama-3-70B", tier="batch", region="us-east")
    requests = list(read_trace(path, options=ReadOptions(labels=labels)))
    assert [r.arrival_s for r in requests] == pytest.approx([0.0, 1.5, 2.0], abs=1e-9)
    assert [r.request_id for r in requests][:2] == ["AzureLLMInferenceTrace_code_1week-0",
                                                    "AzureLLMInferenceTrace_code_1week-1"]
    assert (requests[0].model, requests[0].tier, requests[0].region) == ("Llama-3-70B", "batch", "us-east")


def test_azure_fraction_digits_are_exact_beyond_microseconds(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                    "2023-11-16 18:15:46.6805900,1,1\n2023-11-16 18:15:46.6805901,1,1\n"
                                    "2023-11-17 00:00:00,1,1\n")
    arrivals = [r.arrival_s for r in read_trace(path, "azure")]
    assert arrivals[1] == pytest.approx(1e-7, abs=1e-12)
    assert arrivals[2] == pytest.approx(86_400 - (18 * 3600 + 15 * 60 + 46.68059), abs=1e-9)


BURSTGPT = ("Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "5,1,0.9,ChatGPT,472,18,490,Conversation log\n"
            "45,2,1.2,GPT-4,1087,0,1087,Conversation log\n"
            "118,3,0.7,ChatGPT,417,276,693,API log\n")


def test_burstgpt_fixture_counts_and_skips_failures(tmp_path: Path) -> None:
    path = write(tmp_path, "BurstGPT_1.csv", BURSTGPT)
    assert detect_format(path) is TraceFormat.BURSTGPT
    stats = ReadStats()
    requests = list(read_trace(path, options=ReadOptions(stats=stats)))
    assert [(r.arrival_s, r.model, r.prompt_tokens, r.output_tokens) for r in requests] == [
        (5.0, "ChatGPT", 472, 18), (118.0, "ChatGPT", 417, 276)]
    assert [r.request_id for r in requests] == ["BurstGPT_1-0", "BurstGPT_1-2"]  # ids follow the record
    assert (stats.records, stats.requests, stats.failed, stats.invalid) == (3, 2, 1, 0)


@pytest.mark.parametrize(("name", "text", "line", "message"), [
    ("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10,1\n\n"
              "2023-11-16 18:15:47.1,ten,1\n", 4, "field 'ContextTokens': expected an integer >= 1, got 'ten'"),
    ("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10,1\nyesterday,10,1\n", 3,
     "field 'TIMESTAMP': expected a date and time"),
    ("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10,1\n2023-11-16 18:15:45,1,1\n", 3,
     "field 'TIMESTAMP'"),
    ("b.csv", BURSTGPT.replace("118,3", "-1,3"), 4, "field 'Timestamp': expected a finite number >= 0"),
    ("b.csv", BURSTGPT.replace("GPT-4,1087", "GPT-4,0"), 3, "field 'Request tokens': expected an integer >= 1"),
    ("b.csv", BURSTGPT + "200,4\n", 5, "expected at least 8 columns, got 2"),
    ("m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 2}\n{"timestamp": 1, "input_length": 5}\n',
     2, "field 'output_length': missing"),
    ("m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 2}\n{"timestamp": 1, "inp\n', 2,
     "not valid JSON"),
    ("m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 2}\n'
                '{"timestamp": 9, "input_length": 5, "output_length": 2, "hash_ids": "x"}\n', 2,
     "field 'hash_ids': expected a list of integers"),
    # found by fuzzing (tests/fuzz): json's refusals other than JSONDecodeError escaped as tracebacks
    ("m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 2}\n{"timestamp": ' + "9" * 5000 + "}\n", 2,
     "not valid JSON (Exceeds the limit (4300 digits)"),
    ("m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 2}\n' + "[" * 100_000 + "\n", 2,
     "not valid JSON (nested too deeply)"),
    ("b.csv", BURSTGPT.replace("GPT-4,1087", "GPT-4," + "1" * 500 + "x"), 3, "got '" + "1" * 76 + "..."),
])
def test_a_corrupt_line_names_file_line_and_field_or_is_counted(tmp_path: Path, name: str, text: str, line: int,
                                                                 message: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(TraceFormatError) as raised:
        list(read_trace(path))
    assert str(raised.value).startswith(f"{path}:{line}: ")
    assert message in str(raised.value)
    stats = ReadStats()
    kept = list(read_trace(path, options=ReadOptions(skip_invalid=True, stats=stats)))
    assert stats.invalid == 1
    assert stats.requests == len(kept) == stats.records - stats.invalid - stats.failed
    assert stats.examples[0].startswith(f"{path}:{line}: ")


def test_opscale_csv_skips_and_counts_bad_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "arrival_s,model,tier,region,prompt_tokens,output_tokens\n"
                                    "0,m,t,eu,1,1\n1,m,t,eu,x,1\n2,m,t,eu,3,3\n0.5,m,t,eu,1,1\n")
    stats = ReadStats()
    kept = list(read_trace(path, options=ReadOptions(skip_invalid=True, stats=stats)))
    assert [r.arrival_s for r in kept] == [0.0, 2.0]
    assert (stats.records, stats.invalid) == (4, 2)
    assert ":3: field 'prompt_tokens'" in stats.examples[0] and ":5: field 'arrival_s'" in stats.examples[1]


def test_mapped_csv_with_milliseconds_labels_and_prefix_ids(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "t_ms,in,out,who,blocks\n1000,10,2,a,1;2\n1500,20,3,b,\n")
    mapping = ColumnMapping(arrival="t_ms", arrival_unit="ms", rebase=True, prompt_tokens="in", output_tokens="out",
                            model="who", prefix_hashes="blocks")
    assert detect_format(path, mapped=True) is TraceFormat.MAPPED_CSV
    requests = list(read_trace(path, mapping=mapping))
    assert [(r.arrival_s, r.model, r.prompt_tokens, r.prefix_hashes) for r in requests] == [
        (0.0, "a", 10, (1, 2)), (0.5, "b", 20, ())]


def test_mapped_csv_header_must_have_every_named_column_but_the_prefix_ids(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "t,in,out\n1,2,3\n")
    mapping = ColumnMapping(arrival="t", prompt_tokens="in", output_tokens="out", prefix_hashes="blocks")
    assert [r.prefix_hashes for r in read_trace(path, "mapped-csv", mapping=mapping)] == [()]
    with pytest.raises(TraceFormatError, match=r"x\.csv:1: header lacks column\(s\) 'who'"):
        list(read_trace(path, "mapped-csv", mapping=ColumnMapping(arrival="t", prompt_tokens="in",
                                                                  output_tokens="out", model="who")))


def test_mapped_jsonl_with_datetimes_and_ids(tmp_path: Path) -> None:
    lines = [{"at": "2024-01-01T00:00:00Z", "p": 5, "o": 1, "id": "r1"},
             {"at": "2024-01-01T00:00:02.25Z", "p": 6, "o": 2, "id": "r1"}]
    path = write(tmp_path, "x.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    mapping = ColumnMapping(arrival="at", arrival_unit="datetime", prompt_tokens="p", output_tokens="o",
                            request_id="id")
    with pytest.raises(TraceFormatError, match=r"x\.jsonl:2: field 'id': 'r1' appears twice"):
        list(read_trace(path, "mapped-jsonl", mapping=mapping))
    stats = ReadStats()
    assert [r.arrival_s for r in read_trace(path, "mapped-jsonl", ReadOptions(True, stats), mapping)] == [0.0]
    assert stats.invalid == 1


def test_mapping_refuses_one_column_for_two_fields() -> None:
    with pytest.raises(ValueError, match="column 'n' is mapped to both 'prompt_tokens' and 'output_tokens'"):
        ColumnMapping(arrival="t", prompt_tokens="n", output_tokens="n")


def test_opscale_jsonl_round_trip_keeps_prefix_hashes(tmp_path: Path) -> None:
    source = data_file("samples/mooncake_fast25/synthetic_trace_head2000.jsonl")
    requests = list(read_trace(source))
    path = tmp_path / "out.jsonl.gz"
    assert write_jsonl_trace(path, requests) == 2000
    assert detect_format(path) is TraceFormat.JSONL
    assert list(read_trace(path)) == requests


def test_undetectable_and_unknown_formats_list_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(TraceFormatError, match=r"cannot tell the trace format .* azure, azure2024, burstgpt"):
        read_trace(path)
    with pytest.raises(ValueError, match="unknown trace format 'parquet'; known formats: csv, jsonl"):
        read_trace(path, "parquet")
    with pytest.raises(ValueError, match="needs a column mapping"):
        read_trace(path, "mapped-csv")
    with pytest.raises(TraceFormatError, match="empty file"):
        read_trace(write(tmp_path, "e.csv", "\n\n"))


def test_missing_files_and_bad_gzip_are_trace_errors(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="cannot open"):
        list(read_trace(tmp_path / "nope.csv", "azure"))
    broken = tmp_path / "t.csv.gz"
    broken.write_bytes(gzip.compress(AZURE_2024.encode())[:40])
    with pytest.raises(TraceFormatError, match="t.csv.gz: corrupt or truncated gzip"):
        list(read_trace(broken, "azure"))
