"""The public traces `opscale trace fetch` knows: where each file is published and, where it could be
computed from a copy of the pinned upstream file, its SHA-256. Data only; the download itself lives in
the CLI (the decision core does no network I/O)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TraceFile:
    name: str
    urls: tuple[str, ...]  # tried in order
    sha256: str | None  # None: not known here; the digest is printed and marked unverified


@dataclass(frozen=True, slots=True)
class TraceDataset:
    name: str
    format: str  # the reader's format name
    description: str
    licence: str
    files: tuple[TraceFile, ...]


_AZURE_2023 = "https://raw.githubusercontent.com/Azure/AzurePublicDataset/b469a113cedca53ddc3bdea71a143dc4b7d8700c/data/"
_AZURE_2024_BLOB = "https://azurepublicdatasettraces.blob.core.windows.net/azurellminfererencetrace/"
_AZURE_2024_RELEASE = "https://github.com/Azure/AzurePublicDataset/releases/download/dataset-llm-2024/"
_BURSTGPT = "https://github.com/HPMLL/BurstGPT/releases/download/v1.1/"
_MOONCAKE = ("https://raw.githubusercontent.com/kvcache-ai/Mooncake/3b5a594133958449a1feaf1c9e0fc1b553e34a28/"
             "FAST25-release/traces/")

DATASETS: dict[str, TraceDataset] = {d.name: d for d in (
    TraceDataset("azure2023", "azure", "Azure LLM inference trace 2023 (code, conversation; 1 hour)", "CC-BY-4.0", (
        TraceFile("AzureLLMInferenceTrace_code.csv", (_AZURE_2023 + "AzureLLMInferenceTrace_code.csv",),
                  "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6"),
        TraceFile("AzureLLMInferenceTrace_conv.csv", (_AZURE_2023 + "AzureLLMInferenceTrace_conv.csv",),
                  "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8"),
    )),
    TraceDataset("azure2024", "azure2024", "Azure LLM inference trace 2024 (code, conversation; 1 week)",
                 "CC-BY-4.0", tuple(
        TraceFile(f"AzureLLMInferenceTrace_{kind}_1week.csv",
                  (f"{_AZURE_2024_BLOB}AzureLLMInferenceTrace_{kind}_1week.csv",
                   f"{_AZURE_2024_RELEASE}AzureLLMInferenceTrace_{kind}_1week.csv"), None)
        for kind in ("code", "conv"))),
    TraceDataset("burstgpt", "burstgpt", "BurstGPT v1.1 (ChatGPT / GPT-4 via Azure OpenAI; 2 x 2 months)",
                 "CC-BY-4.0", tuple(
        TraceFile(f"BurstGPT_{i}.csv", (f"{_BURSTGPT}BurstGPT_{i}.csv",), None) for i in (1, 2))),
    TraceDataset("mooncake", "mooncake", "Mooncake FAST'25 traces (conversation, synthetic, tool-agent)",
                 "Apache-2.0", (
        TraceFile("conversation_trace.jsonl", (_MOONCAKE + "conversation_trace.jsonl",),
                  "b8cbb061a85206d729d91cdc2981f43c9e0d99209dce588d3af5f7934408b9df"),
        TraceFile("synthetic_trace.jsonl", (_MOONCAKE + "synthetic_trace.jsonl",),
                  "bd070915a98fc0ed264d7cfef2ce746002eb3076a695ec31ba2674c0111ec131"),
        TraceFile("toolagent_trace.jsonl", (_MOONCAKE + "toolagent_trace.jsonl",), None),
    )),
)}


def dataset(name: str) -> TraceDataset:
    """The dataset called `name`; ValueError listing the known ones otherwise."""
    try:
        return DATASETS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown trace dataset {name!r}; known: {', '.join(DATASETS)}") from None
