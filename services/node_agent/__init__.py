"""The node-agent's live process: engine control on a GPU host and the engines' OpenAI-compatible API."""
