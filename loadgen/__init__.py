"""Trace replay against any OpenAI-compatible endpoint: open-loop, streaming, with a latency report."""
