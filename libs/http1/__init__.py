"""A lean HTTP/1.1 client for upstream calls: keep-alive connections pooled per host, on asyncio.Protocol.

    pool = Pool(max_connections_per_host=64)
    resp = await pool.request("POST", "http://127.0.0.1:11434/v1/chat/completions", body,
                              [("Content-Type", "application/json")], read_timeout_s=60)
    try:
        async for data in resp:        # or: data = await resp.read()
            ...
    finally:
        resp.release()
    await pool.close()

Errors (`wire.py`):

    TransportError
    ├── ConnectFailed   refused, unreachable, DNS failure or connect timeout: nothing was sent
    ├── ReadTimeout     no bytes from the upstream for read_timeout_s (between bytes, not in all)
    └── ResponseCut     the connection closed or broke before the response was complete,
                        or the response was malformed

A request reuses the most recently idle connection to its host. If that connection turns
out to have been closed by the server (it closes before any byte of the response), the
request is sent once more on a fresh connection; once a response byte has arrived it never
is. The caller's headers must not repeat Host or Content-Length, which are always sent.
"""

from switchyard_gateway.http1.pool import Pool
from switchyard_gateway.http1.response import Response
from switchyard_gateway.http1.wire import ConnectFailed, ReadTimeout, ResponseCut, TransportError

__all__ = ["ConnectFailed", "Pool", "ReadTimeout", "Response", "ResponseCut", "TransportError"]
