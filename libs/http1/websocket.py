"""WebSocket (RFC 6455) for the HTTP server: the upgrade's RSGI object, then the socket's frames both ways.

`accept()` answers the handshake (version 13) and returns the socket; `close(status)` before it refuses the
upgrade with that HTTP status. A handshake it cannot accept never reaches the app: the server answers it 426
(another version) or 400 (`handshake_problem`). The socket joins fragments, answers pings itself, refuses unmasked client
frames (1002), a message over its `max_message_bytes` (1009: the app's body limit, else WS_MAX_MESSAGE_BYTES; refused
as soon as a frame's header says so, before its payload is read), a message not whole `message_timeout_s` after its
first byte (1008) and text that is not UTF-8 (1007), and sends a close frame with the code it is closed with and a
short reason; the app's closing message carries that code.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import struct
from collections.abc import Awaitable, Iterator
from typing import TYPE_CHECKING, Any

from switchyard_gateway.http1.exchange import ClientDisconnected, Request, Scope, response_head

if TYPE_CHECKING:
    from switchyard_gateway.http1.server import Connection

WS_MAX_MESSAGE_BYTES = 16 * 1024 * 1024   # a message, when the app names no body limit (`max_body_bytes`)
WS_MESSAGE_TIMEOUT_S = 30.0     # a message begun must be whole this long after its first byte (a trickle holds memory)
WS_MAX_FRAGMENTS = 4096         # frames of one message: more is a client making each one cost us, not a message
WS_MAX_QUEUED = 64              # messages read and not yet taken by the app: past it, reading pauses
CONTROL_MAX = 125               # RFC 6455 5.5: a control frame's payload, at most, and never fragmented
REASON_MAX = CONTROL_MAX - 2    # a close frame's reason, in UTF-8 bytes (after its two-byte code)
WRITE_APART = 64 * 1024         # a payload this large is written beside its header, not copied after it
_CLOSE_CODES_UNSENDABLE = frozenset({1004, 1005, 1006, 1015})
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Message:
    """A WebSocket message as RSGI gives it: kind 0 closed, 1 bytes, 2 text. A close's data is the code the server
    closed the socket with for the client's breach of the protocol (1002, 1007, 1009), else None."""

    __slots__ = ("kind", "data")

    def __init__(self, kind: int, data: Any) -> None:
        self.kind, self.data = kind, data


class WebSocketUpgrade:
    """The RSGI protocol object of a WebSocket request: `accept()` or `close(status)`."""

    def __init__(self, conn: Connection, scope: Scope, request: Request) -> None:
        self.conn, self.scope, self.request = conn, scope, request
        self.socket: WebSocket | None = None

    def handshake_problem(self) -> tuple[int, str] | None:
        """Why this is not a handshake the server can accept (RFC 6455 4.2.1), as (status, reason); else None. A
        version other than 13 is 426, anything else 400; either answer names the version it speaks."""
        headers, request = self.scope.headers, self.request
        version = headers.get("sec-websocket-version")
        if version is not None and version != "13":
            return 426, f"WebSocket version {version[:20]!r} is not supported: this server speaks version 13"
        if version is None:
            return 400, "a WebSocket handshake needs Sec-WebSocket-Version: 13"
        if request.version != b"HTTP/1.1":
            return 400, "a WebSocket handshake is an HTTP/1.1 request"
        if request.decoder is not None or headers.get("content-length", "0").partition(",")[0].strip() != "0":
            return 400, "a WebSocket handshake carries no body"
        key = headers.get("sec-websocket-key", "")
        try:
            valid = len(key) == 24 and len(base64.b64decode(key, validate=True)) == 16
        except (binascii.Error, ValueError):
            valid = False
        if not valid:
            return 400, "Sec-WebSocket-Key must be 16 bytes in base64"
        return None

    def refuse_handshake(self, status: int, body: bytes) -> None:
        """Answer a handshake the server cannot accept, naming the version it speaks."""
        self.refuse(status, [("content-type", "application/json"), ("sec-websocket-version", "13")], body)

    async def accept(self) -> WebSocket:
        key = self.scope.headers.get("sec-websocket-key", "")
        if self.handshake_problem() is not None:     # the server refused it before the app ran: not to be accepted
            raise ClientDisconnected("not a WebSocket handshake this server speaks (version 13)")
        accept = base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()
        self.request.responded = True
        self.conn.write(response_head(b"HTTP/1.1", 101, [], b"upgrade: websocket\r\nconnection: Upgrade\r\n"
                                                    b"sec-websocket-accept: %s\r\n" % accept.encode()))
        self.conn._disarm()
        server = self.conn.server
        self.socket = WebSocket(self.conn, server.ws_max_message_bytes, server.ws_message_timeout_s)
        self.conn.websocket = self.socket
        if self.conn.buffer:
            rest, self.conn.buffer = self.conn.buffer, b""
            self.socket.feed(rest)
        return self.socket

    def close(self, status: int = 1000) -> None:
        if self.socket is not None:
            self.socket.close(status)
        elif not self.request.responded:
            self._status(status if 400 <= status < 600 else 403)

    def close_frame(self, code: int, reason: str) -> None:
        """Close the accepted socket with a close frame that says why (RSGI's `close` carries a code alone)."""
        if self.socket is not None:
            self.socket.close(code, reason)

    def refuse(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Refuse the upgrade with an HTTP answer that says why (RSGI's `close` carries a status alone)."""
        if self.socket is None and not self.request.responded:
            self.request.close_after = True
            self.request.response_bytes(status, headers, body)

    def _status(self, status: int) -> None:
        self.refuse(status, [], b"")

    def finish(self) -> None:
        self.request.close_after = True
        if self.socket is not None:
            self.socket.close(1000)
        elif not self.request.responded:
            self._status(500)
        self.conn.answered(self.request)


class WebSocket:
    """An accepted WebSocket: messages in (pings answered, fragments joined), messages out, a close frame."""

    def __init__(self, conn: Connection, max_message_bytes: int = WS_MAX_MESSAGE_BYTES,
                 message_timeout_s: float = WS_MESSAGE_TIMEOUT_S) -> None:
        self.conn = conn
        self.max_message_bytes, self.message_timeout_s = max_message_bytes, message_timeout_s
        self.buffer = bytearray()
        self.needed = 0                         # bytes the buffer must hold before the next frame can be read
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.fragments: list[bytes] = []
        self.fragment_kind = 0
        self.fragment_bytes = 0                 # the fragments' total, kept as they come (not summed per frame)
        self.closed = False                     # a close frame sent, or the connection gone
        self.delivered = 0                      # messages handed to the app so far
        self.message_since = 0.0                # when the message in progress (part read) began; 0.0: none
        self.message_timer: asyncio.TimerHandle | None = None

    def feed(self, data: bytes) -> None:
        """Take bytes off the connection: whole frames are handled, a partial one waits in a growing buffer (a
        large message arriving in many reads is copied once, not once per read)."""
        buffer = self.buffer
        buffer += data
        if len(buffer) < self.needed:           # the frame in progress is still short: nothing to parse yet
            return
        delivered = self.delivered
        at_frame = 0
        size = len(buffer)
        while True:
            if size - at_frame < 2:
                self.needed = at_frame + 2
                break
            first, second = buffer[at_frame], buffer[at_frame + 1]
            length, at = second & 0x7F, at_frame + 2
            if length == 126:
                if size - at_frame < 4:
                    self.needed = at_frame + 4
                    break
                length, at = struct.unpack_from("!H", buffer, at)[0], at_frame + 4
            elif length == 127:
                if size - at_frame < 10:
                    self.needed = at_frame + 10
                    break
                length, at = struct.unpack_from("!Q", buffer, at)[0], at_frame + 10
            if not second & 0x80:
                self._fail(1002, "client frames must be masked")
                return
            if first & 0x70:
                self._fail(1002, "reserved bits set: no extension was agreed")
                return
            if first & 0x08 and (length > CONTROL_MAX or not first & 0x80):      # checked before it is read
                self._fail(1002, "a control frame is at most 125 bytes and never fragmented")
                return
            if length + (self.fragment_bytes if not first & 0x0F else 0) > self.max_message_bytes:
                self._fail(1009, f"a message over the {self.max_message_bytes}-byte limit")  # before it is read
                return
            if size < at + 4 + length:
                self.needed = at + 4 + length
                break
            payload = _unmask(bytes(buffer[at + 4:at + 4 + length]), bytes(buffer[at:at + 4]))
            at_frame = at + 4 + length
            if not self._frame(first, payload):
                return
        if at_frame:
            del buffer[:at_frame]
            self.needed -= at_frame
        if buffer or self.fragments:            # a message in progress: it has a deadline
            if not self.message_since or self.delivered != delivered:
                self.message_since = self.conn.loop.time()
                if self.message_timer is None:
                    self.message_timer = self.conn.loop.call_later(self.message_timeout_s, self._message_late)
        elif self.message_since:
            self.message_since = 0.0
        self.throttle()

    def _message_late(self) -> None:
        """The deadline of the message in progress: one not whole `message_timeout_s` after its first byte is a
        client that trickles it, holding what it sent so far (up to the message limit) for as long as it likes.
        Time this server did not read (the client left its answers unread) does not count."""
        self.message_timer = None
        if self.closed or not self.message_since:
            return
        now = self.conn.loop.time()
        if self.conn.reading_paused:
            self.message_since = now
        late = self.message_since + self.message_timeout_s - now
        if late > 0:
            self.message_timer = self.conn.loop.call_later(late, self._message_late)
            return
        self._fail(1008, f"a message not whole {self.message_timeout_s:g} s after its first byte")

    def throttle(self) -> None:
        """Read on only while the app keeps up and the client reads what is sent (pongs included): a client that
        floods pings or messages and reads nothing must not grow this process's memory without end."""
        if self.closed:
            return
        if self.messages.qsize() >= WS_MAX_QUEUED or self.conn.write_paused is not None:
            self.conn.pause_reading()
        else:
            self.conn.resume_reading()

    def _frame(self, first: int, payload: bytes) -> bool:
        opcode, fin = first & 0x0F, first & 0x80
        if opcode == 0x8:                       # close: answer it (a malformed one with 1002), end
            code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else 1000
            valid = len(payload) != 1 and code not in _CLOSE_CODES_UNSENDABLE and (
                1000 <= code <= 1014 or 3000 <= code < 5000)
            try:
                payload[2:].decode()
            except UnicodeDecodeError:
                valid = False
            self.close(code if valid else 1002)
            self.messages.put_nowait(Message(0, None))
            return False
        if opcode == 0x9:                       # ping: pong
            self._send(0xA, payload)
            return True
        if opcode == 0xA:
            return True
        if opcode in (0x1, 0x2):
            if self.fragments:
                self._fail(1002, "a new message before the last one ended")
                return False
            if fin:
                self._deliver(opcode, payload)
            else:
                self.fragment_kind, self.fragments, self.fragment_bytes = opcode, [payload], len(payload)
            return True
        if opcode == 0x0:
            if not self.fragments:
                self._fail(1002, "a continuation frame with no message begun")
                return False
            self.fragments.append(payload)
            self.fragment_bytes += len(payload)     # within the limit: checked from the frame's header
            if len(self.fragments) > WS_MAX_FRAGMENTS:
                self._fail(1009, f"a message in more than {WS_MAX_FRAGMENTS} frames")
                return False
            if fin:
                parts, self.fragments, self.fragment_bytes = self.fragments, [], 0
                self._deliver(self.fragment_kind, b"".join(parts))
            return True
        self._fail(1002, f"unknown opcode {opcode:#x}")
        return False

    def _deliver(self, opcode: int, payload: bytes) -> None:
        self.delivered += 1
        if opcode == 0x1:
            try:
                self.messages.put_nowait(Message(2, payload.decode()))
            except UnicodeDecodeError:
                self._fail(1007, "text message is not UTF-8")
        else:
            self.messages.put_nowait(Message(1, payload))

    def _fail(self, code: int, reason: str) -> None:
        """Close for the client's breach of the protocol; the app's last message carries the code (a client's own
        close carries none)."""
        self.close(code, reason)
        self.messages.put_nowait(Message(0, code))

    def _send(self, opcode: int, payload: bytes) -> None:
        length = len(payload)
        if length < 126:
            head = bytes((0x80 | opcode, length))
        elif length < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, length)
        if length < WRITE_APART:
            self.conn.write(head + payload)
        else:                                   # a large answer is not copied once more to put its header first
            self.conn.writelines((head, payload))

    async def receive(self) -> Message:
        if self.closed and self.messages.empty():
            return Message(0, None)
        message = await self.messages.get()
        self.throttle()
        return message

    # The sends write at once and return what to await until the client has read enough of it: the caller's
    # message is then the connection's to hold (one copy), not also the suspended send's.

    def send_bytes(self, data: bytes) -> Awaitable[None]:
        return self._send_message(0x2, data)

    def send_str(self, data: str) -> Awaitable[None]:
        return self._send_message(0x1, data.encode())

    def send_text(self, data: bytes) -> Awaitable[None]:
        """A text message from its UTF-8 bytes (the caller's to have checked), without decoding and encoding it."""
        return self._send_message(0x1, data)

    def _send_message(self, opcode: int, payload: bytes) -> Awaitable[None]:
        if self.closed or self.conn.lost:
            raise ClientDisconnected("the WebSocket is closed")
        self._send(opcode, payload)
        return self.conn.drained() if self.conn.write_paused is not None else _SENT

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame with `code` and `reason` (cut to REASON_MAX bytes; once), then close the
        connection."""
        if self.closed:
            return
        self.closed = True
        self._stop_timer()
        if not self.conn.lost:
            said = reason.encode()[:REASON_MAX].decode("utf-8", "ignore").encode()     # a character cut is dropped
            self._send(0x8, struct.pack("!H", code) + said)
            self.conn.transport.close()         # type: ignore[union-attr]

    def lost(self) -> None:
        self.closed = True
        self._stop_timer()
        self.messages.put_nowait(Message(0, None))

    def _stop_timer(self) -> None:
        timer, self.message_timer = self.message_timer, None
        if timer is not None:
            timer.cancel()


class _Sent:
    """What a send returns when the client keeps up: nothing to wait for."""

    __slots__ = ()

    def __await__(self) -> Iterator[None]:
        return iter(())


_SENT = _Sent()


def _unmask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return payload
    key = int.from_bytes(mask * (len(payload) // 4 + 1), "little")
    return (int.from_bytes(payload, "little") ^ (key & ((1 << (8 * len(payload))) - 1))).to_bytes(len(payload),
                                                                                                  "little")
