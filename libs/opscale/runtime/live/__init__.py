"""The live runtime: the glue that runs the sans-I/O service cores as processes.

Modules (import the one you need; this package imports none of them, so importing it is cheap):
  codec          event dataclasses <-> protobuf messages (proto/opscale/v1)
  bus            NATS JetStream: streams, publish, durable consumers, latest value
  store          Redis: JSON values, windows, the plan (epoch-monotonic), leader leases
  grpc_glue      the NodeAgent gRPC server adapter and client
  telemetry      OpenTelemetry set-up and trace-context propagation (NATS, HTTP, gRPC)
  ops_http       /healthz, /readyz, /metrics
  supervisor     periodic loops and tasks with timeouts, backoff, heartbeats; graceful stop
  settings       pydantic-settings per service, YAML config file
  local_servers  start a local nats-server / valkey-server when none is running (dev, tests)

Only this package, the services/ processes and loadgen/ may do I/O; the decision core never imports it.
"""
