"""The per-message cost of /ws in the gateway's process, without a network: a request read, an answer sent.

    python -m benchmarks.ws_send

Reads a 300-byte request frame (`WebSocket.feed`, then taken off its queue) and sends text answers of 11 KB (one
input of 768 dimensions) and 1.6 MB (100 inputs) through `Session.send` onto our server's WebSocket, over a
transport that takes every byte at once. Best of five rounds, microseconds per message.
"""

from __future__ import annotations

import asyncio
import struct
import time
import types

import uvloop

from switchyard_gateway.http1.websocket import WebSocket
from switchyard_gateway.services.gateway.edge.ws import Session


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        pass


class _Connection:
    """What a WebSocket uses of its connection: a client that reads everything at once."""

    lost, write_paused, send_timer, reading_paused = False, None, None, False

    def __init__(self) -> None:
        self.transport, self.loop = _Transport(), asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.transport.writelines(parts)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def best_us(rounds: list[float]) -> str:
    return f"{min(rounds):8.2f} us"


async def measure() -> None:
    socket = WebSocket(_Connection())           # type: ignore[arg-type]
    payload = b'{"id":1,"model":"nomic-embed-text","input":"' + b"w" * 250 + b'"}'
    frame = struct.pack("!BBH", 0x81, 0x80 | 126, len(payload)) + b"\0\0\0\0" + payload
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(100_000):
            socket.feed(frame)
            socket.messages.get_nowait()
        rounds.append((time.perf_counter() - started) / 100_000 * 1e6)
    print(f"  read a {len(frame)}-byte request       {best_us(rounds)}")
    session = Session(types.SimpleNamespace(settings=None), socket, {}, "bench")  # type: ignore[arg-type]
    for size, count in ((11_000, 100_000), (1_600_000, 1_000)):
        answer = b'{"id":1,"request_id":"b.1","status":200,"data":[' + b"0.0123456," * (size // 10) + b'0]}'
        rounds = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(count):
                await session.send(answer)
            rounds.append((time.perf_counter() - started) / count * 1e6)
        print(f"  send a {len(answer):>9,}-byte answer     {best_us(rounds)}")


if __name__ == "__main__":
    uvloop.run(measure())
