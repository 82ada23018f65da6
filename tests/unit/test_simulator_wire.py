"""HTTP/1.1 parsing and framing of the simulator's hand-written server."""

import pytest

from switchyard_gateway.simulator.wire import BadRequest, body_length, parse_chunked, parse_head, response_head


def test_request_head_is_parsed_and_headers_read_case_insensitively():
    req = parse_head(
        b"POST /v1/models?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nX-Thing:  V "
    )
    assert (req.method, req.path, req.query) == ("POST", "/v1/models", "x=1")
    assert req.header(b"content-length") == b"12"
    assert req.header(b"x-thing") == b"v"
    assert req.header(b"thing") is None
    assert body_length(req) == 12


def test_keep_alive_follows_the_version_and_connection_header():
    assert parse_head(b"GET / HTTP/1.1").keep_alive
    assert not parse_head(b"GET / HTTP/1.1\r\nConnection: close").keep_alive
    assert not parse_head(b"GET / HTTP/1.0").keep_alive
    assert parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive").keep_alive


@pytest.mark.parametrize("head", [b"GET /", b"GET / HTTP/2.0", b"GET /  HTTP/1.1", b"A B C D"])
def test_malformed_heads_are_bad_requests(head):
    with pytest.raises(BadRequest) as exc:
        parse_head(head)
    assert exc.value.status == 400


def test_malformed_content_length_is_a_bad_request():
    with pytest.raises(BadRequest):
        body_length(parse_head(b"POST / HTTP/1.1\r\nContent-Length: -3"))


def test_chunked_body_is_decoded_only_once_complete():
    assert body_length(parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked")) is None
    wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT"
    assert parse_chunked(wire, 0) == (b"hello world", len(wire) - 4)
    assert parse_chunked(wire[:12], 0) is None
    assert parse_chunked(b"5\r\nhello\r\n0\r\n", 0) is None


def test_chunked_trailers_are_skipped():
    wire = b"2\r\nhi\r\n0\r\nX-Trailer: 1\r\n\r\n"
    assert parse_chunked(wire, 0) == (b"hi", len(wire))


def test_response_head_frames_by_length_chunks_or_close():
    sized = response_head(200, b"application/json", 7, True)
    assert sized.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 7\r\n" in sized
    chunked = response_head(200, b"text/event-stream", None, True)
    assert b"Transfer-Encoding: chunked\r\n" in chunked
    closing = response_head(429, b"application/json", 2, False, ((b"Retry-After", b"1"),))
    assert b"Retry-After: 1\r\n" in closing and b"Connection: close\r\n" in closing
    assert closing.endswith(b"\r\n\r\n")
