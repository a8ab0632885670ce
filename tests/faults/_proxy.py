"""A TCP proxy for the fault suite, put between the router and a node-agent's engine server: it passes
bytes through, delays them, or drops the path (a partition), switchable while connections are open.

Partition means what a cut network cable means to both ends: nothing arrives, nothing is refused. New
connections are accepted but no byte goes through; open connections stall in both directions. When the
partition heals, the bytes held back are dropped and the stalled connections are closed (their peers
see a reset, as after a real partition long enough for the kernel to give up).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class FaultProxy:
    target_port: int
    listen_port: int = 0
    delay_s: float = 0.0
    partitioned: bool = False
    _server: asyncio.Server | None = None
    _stalled: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self.listen_port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def partition(self) -> None:
        self.partitioned = True

    def heal(self) -> None:
        self.partitioned = False
        for writer in list(self._stalled):
            writer.transport.abort()
        self._stalled.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.partitioned:
                self._stalled.add(writer)  # accepted by the kernel, then silence
                while self.partitioned and not writer.is_closing():
                    await asyncio.sleep(0.05)  # noqa: TID251 - a stalled connection waits for the heal
                writer.transport.abort()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                writer.transport.abort()
                return
            await asyncio.gather(self._pipe(reader, up_writer, writer), self._pipe(up_reader, writer, up_writer))
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, peer: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                if self.partitioned:
                    self._stalled.update((dst, peer))
                    while self.partitioned:
                        await asyncio.sleep(0.05)  # noqa: TID251 - held back until the heal drops it
                    return
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)  # noqa: TID251 - the injected network delay
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()
