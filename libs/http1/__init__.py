"""A lean HTTP/1.1 client for upstream calls: keep-alive connections pooled per host, on asyncio.Protocol.

    pool = Pool(max_connections_per_host=64)
    resp = await pool.request("POST", "http://127.0.0.1:11434/v1/chat/completions", body,
                              [("Content-Type", "application/json")], read_timeout_s=60)
    try:
        async for data in resp:        # or: data = await resp.read(limit=...)
            ...
    finally:
        resp.release()
    await pool.close()

For a short exchange read whole under one deadline (the router's probes):

    fetched = await pool.fetch("GET", "https://api.example.com/v1/models",
                               [("Authorization", "Bearer ...")], timeout_s=5)
    fetched.status, fetched.headers, fetched.json()

`https://` URLs use `tls_context()`: the system's CAs, host name checked and sent (SNI), ALPN
`http/1.1`; pass `ssl_context` to trust something else.

Errors (`wire.py`):

    TransportError
    ├── ConnectFailed     refused, unreachable, DNS or TLS failure, connect timeout: nothing was sent
    ├── ReadTimeout       no bytes from the upstream for read_timeout_s (between bytes, not in all)
    │   └── AnswerTooSlow   a body not all arrived within read()'s within_s (its connection closed)
    ├── ResponseCut       the connection closed or broke before the response was complete,
    │   │                 or the response was malformed (its head over 64 KiB, say, or a body
    │   │                 larger than fetch's max_body_bytes)
    │   ├── NoResponse      the connection closed before any byte of the response (a reused one:
    │   │                   also once more on a fresh one)
    │   └── AnswerTooLarge  a body over read()'s limit (its connection closed)
    └── DeadlineExceeded  fetch got no complete response within its timeout_s

A request reuses the most recently idle connection to its host. If that connection turns
out to have been closed by the server (it closes before any byte of the response), the
request is sent once more on a fresh connection; once a response byte has arrived it never
is. The caller's headers must not repeat Host or Content-Length, which are always sent.
A response head's lines may end in CRLF or, as RFC 9112 section 2.2 lets a recipient accept,
a bare LF (old servers write them so).
"""

from switchyard_gateway.http1.conn import NoResponse
from switchyard_gateway.http1.pool import Pool, tls_context
from switchyard_gateway.http1.response import Fetched, Response
from switchyard_gateway.http1.wire import AnswerTooLarge, AnswerTooSlow, ConnectFailed, DeadlineExceeded, ReadTimeout, \
    ResponseCut, TransportError

__all__ = ["AnswerTooLarge", "AnswerTooSlow", "ConnectFailed", "DeadlineExceeded", "Fetched", "NoResponse", "Pool",
           "ReadTimeout", "Response", "ResponseCut", "TransportError", "tls_context"]
