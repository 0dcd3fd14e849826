"""A TCP proxy in front of a real server that breaks a connection at the moment a test picks.

Some faults cannot be timed by stopping a server: a COMMIT that the database applied but whose
answer never came back happens once in thousands of calls. The proxy makes it happen on demand:
`cut_after(b"COMMIT")` lets the next message holding those bytes reach the server, waits for the
server's answer, and closes both sides without passing the answer on; `cut_before` closes them
instead of delivering the message, so the client cannot tell either from the other.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

CHUNK = 65_536


class FaultProxy:
    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self._upstream_url = upstream_url
        self._host = parts.hostname or "127.0.0.1"
        self._upstream_port = parts.port or 5432
        self._server: asyncio.Server | None = None
        self._markers: list[tuple[bytes, bool]] = []  # (bytes to look for, deliver them first)
        self.cuts = 0
        self.port = 0

    @property
    def url(self) -> str:
        """The upstream URL with the proxy's address in place of the server's."""
        parts = urlsplit(self._upstream_url)
        user = parts.netloc.rpartition("@")[0]
        netloc = (f"{user}@" if user else "") + f"127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def cut_after(self, marker: bytes) -> None:
        """The next message holding `marker` is delivered and answered, and its answer is lost."""
        self._markers.append((marker, True))

    def cut_before(self, marker: bytes) -> None:
        """The next message holding `marker` is lost with its connection."""
        self._markers.append((marker, False))

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(self._host, self._upstream_port)
        except OSError:
            client_writer.close()
            return
        answered_in_vain = asyncio.Event()

        async def upstream() -> None:
            while data := await client_reader.read(CHUNK):
                found = next((m for m in self._markers if m[0] in data), None)
                if found is not None:
                    self._markers.remove(found)
                    if not found[1]:
                        self.cuts += 1
                        return
                    answered_in_vain.set()
                server_writer.write(data)
                await server_writer.drain()

        async def downstream() -> None:
            while data := await server_reader.read(CHUNK):
                if answered_in_vain.is_set():
                    self.cuts += 1
                    return
                client_writer.write(data)
                await client_writer.drain()

        pumps = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (client_writer, server_writer):
                writer.close()
