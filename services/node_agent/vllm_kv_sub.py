"""A node-agent's subscription to one vLLM server's KV event publisher (vLLM `--kv-events-config
'{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557"}'`).

A ZMQ SUB socket connects to the server's endpoint (ZMQ reconnects by itself when the server restarts)
and a task decodes each message as it arrives (opscale.openai.vllm_kv_events: sequence gaps, repeats,
restarts and bad messages are counted there, never raised), then renamed into opscale's block hashes
from their token ids (opscale.openai.vllm_kv_rekey), so the router's index holds the blocks under the
names its tokenized prompts have; renaming follows vLLM's cache as it changes, before anything waits
or is dropped here. The events wait here until the agent's
next tick takes them for the forwarder. What waits is bounded: past `max_pending` events (the bus is
down, the agent stalls), they are replaced by one AllBlocksCleared, so the router's index forgets this
instance's blocks rather than keep a picture with a hole in it, and learns them again from what follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import zmq
import zmq.asyncio

from opscale.model.kv_events import KvBlockEvent, KvEventKind
from opscale.openai.vllm_kv_events import VllmKvReader
from opscale.openai.vllm_kv_rekey import VllmKvRekeyer

log = logging.getLogger(__name__)


class VllmKvSubscriber:
    """See the module docstring. `block_tokens`: the tokens of a block as the router hashes them
    (engine.prefix_block_tokens), which must be the server's --block-size. Create it inside the running
    event loop; `await close()` at the end."""

    def __init__(self, endpoint: str, block_tokens: int, topic: str = "", max_pending: int = 100_000,
                 context: zmq.asyncio.Context | None = None) -> None:
        self.endpoint = endpoint
        self.reader = VllmKvReader()
        self.rekeyer = VllmKvRekeyer(block_tokens)
        self._told_block_size = False
        self.max_pending = max_pending
        self.overflows = 0
        self._pending: list[KvBlockEvent] = []
        self._socket = (context or zmq.asyncio.Context.instance()).socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        try:
            self._socket.connect(endpoint)
        except zmq.ZMQError:
            self._socket.close(linger=0)
            raise
        self._task = asyncio.create_task(self._run(), name=f"vllm-kv-events {endpoint}")

    async def _run(self) -> None:
        while True:
            frames = await self._socket.recv_multipart()
            events = self.rekeyer.rekey(self.reader.feed(frames))
            if self.rekeyer.stats.block_size_mismatch and not self._told_block_size:
                self._told_block_size = True
                log.warning("KV events of %s: blocks of another size than engine.prefix_block_tokens (%d) are "
                            "dropped; start vLLM with --block-size %d or set engine.prefix_block_tokens to its "
                            "block size", self.endpoint, self.rekeyer.block_size, self.rekeyer.block_size)
            if not events:
                continue
            if len(self._pending) + len(events) > self.max_pending:
                self.overflows += 1
                log.warning("KV events of %s: more than %d waiting; the router is told to forget this "
                            "instance's blocks", self.endpoint, self.max_pending)
                self._pending = [KvBlockEvent(KvEventKind.CLEARED)]
                continue
            self._pending.extend(events)

    def take(self) -> list[KvBlockEvent]:
        """The events since the last call, in order."""
        events, self._pending = self._pending, []
        return events

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._socket.close(linger=0)
