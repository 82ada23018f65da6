"""HTTP/1.1 on the wire: parse requests (sized or chunked bodies) and frame responses."""

from __future__ import annotations

from collections.abc import Callable

from switchyard_gateway.simulator.replies import Reply, StreamReply

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024

REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
}


class Request:
    """One parsed request; headers are kept as their lower-cased block and read on demand."""

    __slots__ = ("method", "path", "query", "fields", "body", "keep_alive", "http11")

    def __init__(self, method: str, path: str, query: str, fields: bytes, http11: bool) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.fields = fields  # b"\r\nname: value\r\n...", lower-cased
        self.body = b""
        self.http11 = http11
        connection = self.header(b"connection") or b""
        self.keep_alive = b"close" not in connection if http11 else b"keep-alive" in connection

    def header(self, name: bytes) -> bytes | None:
        """The value of header `name` (lower-case), lower-cased, or None when absent."""
        fields = self.fields
        start = fields.find(b"\r\n" + name + b":")
        if start < 0:
            return None
        start += len(name) + 3
        end = fields.find(b"\r\n", start)
        return (fields[start:] if end < 0 else fields[start:end]).strip()


class Plan:
    """A reply that is not simply sent now: wait `delay_s`, pace chunks, or fail on the wire.

    `fault` is "" (none), "hang" (never answer), "cut_end" (send it all but a stream's end, then drop
    the connection) or "cut" (send about half, then drop the
    connection).
    """

    __slots__ = ("reply", "delay_s", "interval_s", "fault", "end_delay_s")

    def __init__(
        self,
        reply: Reply | StreamReply | None,
        delay_s: float = 0.0,
        interval_s: float = 0.0,
        fault: str = "",
        end_delay_s: float = 0.0,
    ) -> None:
        self.reply = reply
        self.delay_s = delay_s
        self.interval_s = interval_s
        self.fault = fault
        self.end_delay_s = end_delay_s


App = Callable[[Request], "Reply | StreamReply | Plan"]


class BadRequest(Exception):
    """The bytes on the wire are not an HTTP/1.1 request we accept; carries the status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_head(head: bytes) -> Request:
    """Parse a request line and headers (without the blank line that ends them)."""
    line_end = head.find(b"\r\n")
    request_line = head if line_end < 0 else head[:line_end]
    try:
        method, target, version = request_line.split(b" ")
    except ValueError:
        raise BadRequest(400, "malformed request line") from None
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        raise BadRequest(400, "unsupported HTTP version")
    fields = b"" if line_end < 0 else head[line_end:].lower()
    path, _, query = target.decode("latin-1").partition("?")
    return Request(method.decode("latin-1"), path, query, fields, version == b"HTTP/1.1")


def body_length(req: Request) -> int | None:
    """The declared body size, or None when the body is chunked."""
    encoding = req.header(b"transfer-encoding")
    if encoding is not None and b"chunked" in encoding:
        return None
    raw = req.header(b"content-length") or b"0"
    if not raw.isdigit():
        raise BadRequest(400, "malformed Content-Length")
    size = int(raw)
    if size > MAX_BODY_BYTES:
        raise BadRequest(413, "body too large")
    return size


def parse_chunked(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at `pos`: (body, end position), or None if incomplete."""
    parts = []
    total = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(buf[pos:eol].split(b";")[0], 16)
        except ValueError:
            raise BadRequest(400, "malformed chunk size") from None
        pos = eol + 2
        if size == 0:
            if buf[pos : pos + 2] == b"\r\n":
                return b"".join(parts), pos + 2
            end = buf.find(b"\r\n\r\n", pos)  # trailers, ignored
            return None if end < 0 else (b"".join(parts), end + 4)
        total += size
        if total > MAX_BODY_BYTES:
            raise BadRequest(413, "body too large")
        if len(buf) < pos + size + 2:
            return None
        parts.append(buf[pos : pos + size])
        pos += size + 2


def response_head(
    status: int,
    content_type: bytes,
    length: int | None,
    keep_alive: bool,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    chunked: bool = True,
) -> bytes:
    """Status line and headers; with no length the body is chunked, or ends at close."""
    reason = REASONS.get(status, b"Unknown")
    parts = [b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n" % (status, reason, content_type)]
    if length is not None:
        parts.append(b"Content-Length: %d\r\n" % length)
    elif chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    for name, value in extra:
        parts.append(name + b": " + value + b"\r\n")
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
