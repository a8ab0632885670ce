"""Limits of a public HTTP server (the router's OpenAI API): a setting of its own module so the settings
need not import the server, which applies them (opscale_services.router.http1_server)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ServerLimits"]


class ServerLimits(BaseModel):
    """What a public HTTP server allows a client: how long it may take to send a request's head and
    body, how long an idle keep-alive connection is kept, how long a client may leave its answers unread,
    and how large a head and a body may be. Each
    limit is answered clearly: a connection that sends no complete head in time
    is closed, a slow body gets 408, a header too large 431, a body too large 413, all with OpenAI's
    error body."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    header_timeout_s: float = Field(10.0, gt=0, description="A new connection's first request head must "
                                    "arrive within this; a connection that never sends one is closed")
    body_timeout_s: float = Field(30.0, gt=0, description="A request's body must arrive within this of its head "
                                  "(408 otherwise)")
    keepalive_timeout_s: float = Field(30.0, gt=0, description="An idle keep-alive connection is closed after "
                                       "this (also bounds a stalled head on a reused connection)")
    send_timeout_s: float = Field(60.0, gt=0, description="A client that reads nothing of its answers for this "
                                  "long is disconnected (a stream's upstream request is then released)")
    max_header_bytes: int = Field(8190, ge=1024, description="Longest request line and header line "
                                  "(431 beyond it)")
    max_headers: int = Field(128, ge=8, description="Most header lines in a request (431 beyond it)")
    max_body_bytes: int = Field(1 << 20, ge=1, description="Largest request body (413 beyond it)")
