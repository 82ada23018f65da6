"""HTTP/1.1 responses on the wire: head parsing, body framing, de-chunking, and the client's errors.

The error hierarchy is drawn in the package docstring (`switchyard_gateway.http1`).
"""

from __future__ import annotations

import re

MAX_HEAD_BYTES = 64 * 1024  # status line and headers, with the blank line that ends them
MAX_LINE_BYTES = 8 * 1024  # one chunk-size or trailer line

CHUNKED = -1  # body_length(): the body is chunked
UNTIL_CLOSE = -2  # body_length(): the body ends when the connection closes

_HEX = b"0123456789abcdefABCDEF"
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9112 7.1.1: chunk-size, then `;` extensions, each a token with an optional token or quoted-string value
_SIZE_LINE = re.compile(rb'[0-9A-Fa-f]{1,15}(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|"(?:[\t !#-\[\]-~\x80-\xff]|'
                        rb'\\[\t -~\x80-\xff])*"))?)*' % (_TOKEN, _TOKEN))
_FIELD_LINE = re.compile(rb"%s:[\t \x21-\x7e\x80-\xff]*" % _TOKEN)      # RFC 9112 7.1.2: a trailer is a field line
_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class TransportError(Exception):
    """A call to an upstream server failed; see the subclasses for how."""


class ConnectFailed(TransportError):
    """Refused, unreachable, DNS failure or connect timeout: nothing was sent."""


class ReadTimeout(TransportError):
    """No bytes from the upstream for read_timeout_s."""


class ResponseCut(TransportError):
    """The connection closed or broke before the response was complete, or it was malformed."""


class AnswerTooLarge(ResponseCut):
    """The response body is larger than the reader allowed (`Response.read(limit)`); its connection is closed."""


class AnswerTooSlow(ReadTimeout):
    """The response body did not all arrive within the reader's time (`Response.read(within_s=)`), however
    steadily its bytes came; its connection is closed."""


class DeadlineExceeded(TransportError):
    """`Pool.fetch` got no complete response (connect, head and body) within its `timeout_s`."""


def head_end(buf: bytes) -> tuple[int, int]:
    """Where the response head at the start of `buf` ends: (its length without the blank line that ends it, where
    what follows begins), or (-1, -1) while that blank line has not arrived. Lines end in CRLF or, as RFC 9112
    section 2.2 lets a recipient accept, in a bare LF: the blank line is the first LF followed by CRLF or LF."""
    crlf = buf.find(b"\n\r\n")                                    # a CRLF head's end: "\r\n\r\n"
    lf = buf.find(b"\n\n", 0, len(buf) if crlf < 0 else crlf + 1)  # a bare LF's, if before it (no body scanned)
    if lf >= 0:
        eol, after = lf, lf + 2
    elif crlf >= 0:
        eol, after = crlf, crlf + 3
    else:
        return -1, -1
    return (eol - 1 if eol and buf[eol - 1] == 13 else eol), after     # 13: the CR before the LF, if any


def parse_head(buf: bytes, end: int) -> tuple[int, dict[str, str], bool]:
    """(status, headers, keep_alive) from `buf[:end]`, the head without its blank line (`head_end`); its lines
    end in CRLF or a bare LF.

    Header names are lower-cased, values stripped, repeated headers joined with ", ".
    """
    eol = buf.find(b"\n", 0, end)
    line = buf[:end] if eol < 0 else buf[: eol - 1 if eol and buf[eol - 1] == 13 else eol]
    if line[:7] != b"HTTP/1." or line[8:9] != b" " or not line[9:12].isdigit():
        raise ResponseCut(f"malformed status line {line[:80]!r}")
    if len(line) > 12 and line[12:13] != b" ":
        raise ResponseCut(f"malformed status line {line[:80]!r}")
    status = int(line[9:12])
    headers: dict[str, str] = {}
    if eol >= 0:
        block = buf[eol + 1 : end].decode("latin-1")   # a CR ending a line is stripped with its value
        if "\n " in block or "\n\t" in block or block[:1] in (" ", "\t"):
            block = _unfold(block)
        for field in block.split("\n"):
            name, sep, value = field.partition(":")
            if not sep:
                raise ResponseCut(f"malformed header line {field[:80]!r}")
            name = name.lower()
            if name in headers:
                headers[name] = f"{headers[name]}, {value.strip()}"
            else:
                headers[name] = value.strip()
    connection = headers.get("connection")
    if line[7:8] == b"1":
        keep_alive = connection is None or "close" not in connection.lower()
    else:  # HTTP/1.0 keeps the connection only when asked to
        keep_alive = connection is not None and "keep-alive" in connection.lower()
    return status, headers, keep_alive


def body_length(status: int, headers: dict[str, str], head_only: bool) -> int:
    """The body's size in bytes, or CHUNKED, or UNTIL_CLOSE (RFC 9112 section 6.3)."""
    if head_only or status < 200 or status == 204 or status == 304:
        return 0
    encoding = headers.get("transfer-encoding")
    if encoding is not None:
        return CHUNKED if encoding.lower().rstrip().endswith("chunked") else UNTIL_CLOSE
    length = headers.get("content-length")
    if length is None:
        return UNTIL_CLOSE
    if "," in length:  # repeated header: acceptable only when every copy agrees
        copies = {copy.strip() for copy in length.split(",")}
        if len(copies) != 1:
            raise ResponseCut(f"conflicting Content-Length {length!r}")
        length = copies.pop()
    if not (length.isascii() and length.isdigit()):
        raise ResponseCut(f"malformed Content-Length {length!r}")
    return int(length)


class ChunkedDecoder:
    """De-chunks a `Transfer-Encoding: chunked` body fed in arbitrary pieces.

    Chunk extensions and trailers are read and ignored. A `strict` decoder (a request's body, which another server
    in front of us may have framed differently) also refuses a chunk extension or a trailer line that RFC 9112
    7.1.1 and 7.1.2 do not allow: a control byte or a bare LF there is where request smuggling hides a request.
    An upstream's answer is read leniently.
    """

    __slots__ = ("_state", "_left", "_pending", "strict", "chunks")

    def __init__(self, strict: bool = False) -> None:
        self._state = _SIZE
        self._left = 0  # bytes left in this chunk; in trailers, bytes of trailers allowed
        self._pending = b""  # an incomplete size line, chunk end or trailer line
        self.strict = strict
        self.chunks = 0  # chunks read so far: the work a body costs grows with them, not with its bytes

    def feed(self, data: bytes, out: list[bytes]) -> bytes | None:
        """Append the body bytes in `data` to `out`; once the body is complete, return the
        bytes that follow it (usually b""), else None. Raises ResponseCut when malformed."""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        state = self._state
        pos = 0
        size = len(data)
        while pos < size:
            if state == _DATA:
                left = self._left
                end = pos + left if size - pos > left else size
                out.append(data[pos:end])
                self._left = left - (end - pos)
                pos = end
                if not self._left:
                    state = _DATA_END
            elif state == _SIZE:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    break
                left = _chunk_size(data[pos:eol], self.strict)
                self.chunks += 1
                pos = eol + 2
                if left and pos + left + 2 <= size and data[pos + left : pos + left + 2] == b"\r\n":
                    out.append(data[pos : pos + left])  # the whole chunk and its CRLF are here: at once
                    pos += left + 2
                    continue
                self._left = left
                if left:
                    state = _DATA
                else:
                    state = _TRAILER
                    self._left = MAX_HEAD_BYTES
            elif state == _DATA_END:
                if size - pos < 2:
                    break
                if data[pos : pos + 2] != b"\r\n":
                    raise ResponseCut("chunk not followed by CRLF")
                pos += 2
                state = _SIZE
            elif state == _TRAILER:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    break
                if eol == pos:
                    self._state = _DONE
                    return data[pos + 2 :]
                if self.strict and not _FIELD_LINE.fullmatch(data, pos, eol):
                    raise ResponseCut(f"malformed trailer line {data[pos:eol][:40]!r}")
                self._left -= eol + 2 - pos
                if self._left < 0:
                    raise ResponseCut("chunked trailers too large")
                pos = eol + 2
            else:
                raise ResponseCut("bytes after the end of a chunked body")
        self._state = state
        if pos < size:
            if size - pos > MAX_LINE_BYTES:
                raise ResponseCut("chunk size or trailer line too long")
            self._pending = data[pos:]
        return None


def _unfold(block: str) -> str:
    """Header lines with obsolete line folding joined up (RFC 9112 section 5.2); lines end in LF (a CR before it
    is left for the value's strip)."""
    lines: list[str] = []
    for line in block.split("\n"):
        if line[:1] not in (" ", "\t"):
            lines.append(line)
        elif lines:
            lines[-1] = f"{lines[-1].rstrip()} {line.strip()}"
        else:
            raise ResponseCut("whitespace before the first header line")
    return "\n".join(lines)


def _chunk_size(line: bytes, strict: bool = False) -> int:
    if 0 < len(line) <= 15 and not line.strip(_HEX):  # the usual size line: hex digits alone
        return int(line, 16)
    if strict and not _SIZE_LINE.fullmatch(line):
        raise ResponseCut(f"malformed chunk size line {line[:40]!r}")
    raw = line.split(b";", 1)[0].strip(b" \t")
    if not raw or raw.strip(_HEX) or len(raw) > 15:
        raise ResponseCut(f"malformed chunk size {line[:40]!r}")
    return int(raw, 16)
