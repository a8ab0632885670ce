"""The OpenAI-compatible API's wire format, shared by the router, the node-agent's engine server and the
load generator: `schema` (request bodies, validation, error and response bodies) and `sse` (the
server-sent events codec).

Pure: no I/O, no network library, no clock. The live shells (opscale.runtime.live, opscale_services)
and the load generator read and write the bytes; this package only says what they mean.
"""
