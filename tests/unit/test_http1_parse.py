"""Parsing upstream HTTP/1.1 responses: heads, body framing and chunked bodies fed in any pieces."""

import pytest

from switchyard_gateway.http1.wire import (
    CHUNKED,
    MAX_LINE_BYTES,
    UNTIL_CLOSE,
    ChunkedDecoder,
    ResponseCut,
    body_length,
    parse_head,
)


def head(text: bytes) -> tuple[int, dict[str, str], bool]:
    return parse_head(text + b"\r\n\r\n", len(text))


def test_head_has_lowercased_names_stripped_values_and_joined_repeats():
    status, headers, keep = head(
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After:  3 \r\nSet-Cookie: a\r\nset-cookie: b"
    )
    assert status == 429
    assert headers == {"retry-after": "3", "set-cookie": "a, b"}
    assert keep


def test_status_line_without_a_reason_or_headers_parses():
    assert head(b"HTTP/1.1 204") == (204, {}, True)


def test_folded_header_line_continues_the_previous_value():
    assert head(b"HTTP/1.1 200 OK\r\nX-Long: one\r\n  two")[1] == {"x-long": "one two"}


@pytest.mark.parametrize(
    ("status_line", "connection", "keep"),
    [
        (b"HTTP/1.1 200 OK", b"", True),
        (b"HTTP/1.1 200 OK", b"\r\nConnection: Close", False),
        (b"HTTP/1.0 200 OK", b"", False),
        (b"HTTP/1.0 200 OK", b"\r\nConnection: Keep-Alive", True),
    ],
)
def test_keep_alive_follows_the_version_and_connection_header(status_line, connection, keep):
    assert head(status_line + connection)[2] is keep


@pytest.mark.parametrize(
    "text",
    [
        b"HTTP/2 200 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"ICY 200 OK",
        b"HTTP/1.1 200 OK\r\nno colon",
        b"HTTP/1.1 200 OK\r\n X-Indented: before any field",
    ],
)
def test_malformed_head_raises_response_cut(text):
    with pytest.raises(ResponseCut):
        head(text)


@pytest.mark.parametrize(
    ("status", "headers", "head_only", "length"),
    [
        (200, {"content-length": "12"}, False, 12),
        (200, {"content-length": "12"}, True, 0),
        (204, {}, False, 0),
        (304, {"content-length": "12"}, False, 0),
        (200, {"transfer-encoding": "chunked", "content-length": "12"}, False, CHUNKED),
        (200, {"transfer-encoding": "gzip, Chunked"}, False, CHUNKED),
        (200, {"transfer-encoding": "gzip"}, False, UNTIL_CLOSE),
        (200, {}, False, UNTIL_CLOSE),
        (200, {"content-length": "7, 7"}, False, 7),
    ],
)
def test_body_length_follows_rfc_9112(status, headers, head_only, length):
    assert body_length(status, headers, head_only) == length


@pytest.mark.parametrize("value", ["7, 8", "-1", "+5", "1_0", "²", "", "0x10"])
def test_bad_content_length_raises_response_cut(value):
    with pytest.raises(ResponseCut):
        body_length(200, {"content-length": value}, False)


WIRE = b"5;name=value\r\nhello\r\n1\r\n \r\n0B\r\nchunked yar\r\n1\r\nd\r\n0\r\nTrailer: t\r\n\r\n"


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 7, len(WIRE)])
def test_chunked_body_decodes_however_it_is_split(piece):
    decoder, out, rest = ChunkedDecoder(), [], None
    for i in range(0, len(WIRE), piece):
        assert rest is None
        rest = decoder.feed(WIRE[i : i + piece], out)
    assert b"".join(out) == b"hello chunked yard"
    assert rest == b""


def test_chunked_body_returns_the_bytes_after_it():
    out: list[bytes] = []
    assert ChunkedDecoder().feed(b"2\r\nok\r\n0\r\n\r\nHTTP/1.1", out) == b"HTTP/1.1"
    assert out == [b"ok"]


def test_large_chunk_is_passed_on_without_waiting_for_all_of_it():
    decoder, out = ChunkedDecoder(), []
    assert decoder.feed(b"100000\r\n" + b"x" * 1000, out) is None
    assert out == [b"x" * 1000]


@pytest.mark.parametrize("wire", [b"zz\r\n", b"0x10\r\n", b"-1\r\n", b"+5\r\n", b"\r\n", b"1 2\r\n", b"2\r\nokXX"])
def test_malformed_chunking_raises_response_cut(wire):
    with pytest.raises(ResponseCut):
        ChunkedDecoder().feed(wire, [])


def test_endless_chunk_size_line_raises_response_cut():
    with pytest.raises(ResponseCut):
        ChunkedDecoder().feed(b"1" * (MAX_LINE_BYTES + 1), [])


@pytest.mark.parametrize(
    "wire",
    [
        b"2;\nxx\r\nok\r\n0\r\n\r\n",  # a bare LF in an extension
        b"2;a\x00\r\nok\r\n0\r\n\r\n",  # a control byte in one
        b"2;\r\nok\r\n0\r\n\r\n",  # `;` and no name
        b"2\r\nok\r\n0\r\nX: y\nGET / HTTP/1.1\r\n\r\n",  # a trailer with a bare LF in it
        b"2\r\nok\r\n0\r\nnot a field\r\n\r\n",
    ],
)
def test_a_strict_decoder_refuses_what_rfc_9112_forbids_and_a_lenient_one_reads_it(wire):
    """Requests are read strictly (a server in front may frame them otherwise); upstream answers leniently."""
    with pytest.raises(ResponseCut):
        ChunkedDecoder(strict=True).feed(wire, [])
    out: list[bytes] = []
    assert ChunkedDecoder().feed(wire, out) == b"" and b"".join(out) == b"ok"


def test_a_strict_decoder_reads_extensions_and_trailers_rfc_9112_allows_and_counts_chunks():
    decoder, out = ChunkedDecoder(strict=True), []
    wire = b'2 ; a=b;c ; d = "q\\" x"\r\nok\r\n1\r\n!\r\n0\r\nx-sum: 1\r\nx-e:\r\n\r\n'
    assert decoder.feed(wire, out) == b"" and b"".join(out) == b"ok!"
    assert decoder.chunks == 3
