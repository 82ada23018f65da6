"""A model server that is not ours (an old build, a broken one), played over real HTTP/1.1 on loopback."""

from __future__ import annotations

import asyncio


class RawUpstream:
    """Reads each request on a keep-alive connection and hands it to `answer`, which writes the reply itself.

        async with MyUpstream() as upstream:       # a subclass with its own `answer`
            register(upstream.url)
    """

    def __init__(self) -> None:
        self.server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def answer(self, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        """Reply to one request (`head`: its request line and headers; `body`: by Content-Length)."""
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await self.answer(head, await reader.readexactly(length) if length else b"", writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
