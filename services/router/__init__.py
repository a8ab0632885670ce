"""The router's live process: the OpenAI-compatible HTTP API and the pooled client to engines."""
