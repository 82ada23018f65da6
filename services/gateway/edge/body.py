"""Read a request body within the size limit; refuse a larger one early, and keep reading it so the client hears why.

A client that writes its whole body before reading (Python's urllib, `requests`)
sees a broken pipe, not the 413, if the server answers and closes while the body is
still coming. So a body over the limit is answered 413 at once and then read to its
end and thrown away, up to DRAIN_MAX_BYTES and DRAIN_MAX_S; past either bound the
connection is dropped.
"""

from __future__ import annotations

import asyncio
from typing import Any

from switchyard_gateway.services.gateway.edge.errors import BadRequest, BodyNotReceived, GatewayError, PayloadTooLarge, \
    UnsupportedEncoding, render_for, shape_for
from switchyard_gateway.http1.server import BodyRefused
from switchyard_gateway.services.gateway.edge.headers import request_id_headers

DRAIN_MAX_BYTES = 256 * 1024 * 1024       # a refused body is read and dropped up to this size
DRAIN_MAX_S = 10.0                        # ... and for this long


async def read_body(headers: Any, proto: Any, limit: int) -> bytes:
    """The whole body, or PayloadTooLarge (answer it, then `drain`); BadRequest for a malformed Content-Length;
    BodyNotReceived when the client stops sending it (the server's body timeout) or leaves; UnsupportedEncoding,
    once it is read, for a body sent coded (`Content-Encoding: gzip`), which no route decodes: it was read as
    malformed JSON at byte 0, or the header was ignored."""
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadRequest("Content-Length must be a number of bytes", code="invalid_request")
        if int(length) > limit:
            raise too_large(limit)
    try:
        if length is not None:
            body = await proto()
        else:
            chunks: list[bytes] = []
            size = 0
            async for chunk in proto:
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                chunks.append(chunk)
            body = b"".join(chunks)
    except BodyRefused as exc:              # our server answered it 400 already: counted as what the client got
        raise BadRequest(str(exc), headers={"connection": "close"}) from exc
    except ConnectionError as exc:          # our server's ClientDisconnected: stalled, or gone
        raise BodyNotReceived("The request body did not arrive in time", headers={"connection": "close"}) from exc
    coding = headers.get("content-encoding")
    if coding is not None and body and coding.strip(" \t").lower() not in ("", "identity"):
        raise UnsupportedEncoding(f"Content-Encoding '{coding}' is not supported: send the body as it is",
                                  headers={"accept-encoding": "identity"})
    return body


async def refuse(proto: Any, path: str, error: GatewayError, request_id: str) -> None:
    """Answer a request refused before it was served, in its door's shape; a body refused for its size is then
    read on (`drain`), so that the client hears why; one that stopped coming is not waited for again."""
    proto.response_bytes(error.status, [("content-type", "application/json"), *error.headers.items(),
                                        *request_id_headers(shape_for(path), request_id)], render_for(path, error))
    if isinstance(error, PayloadTooLarge):
        await drain(proto)


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body is larger than the {limit} byte limit", headers={"connection": "close"})


async def drain(proto: Any) -> int:
    """Read what is left of a refused body and drop it, within DRAIN_MAX_BYTES and DRAIN_MAX_S; the bytes read."""
    read = 0
    try:
        async with asyncio.timeout(DRAIN_MAX_S):
            async for chunk in proto:
                read += len(chunk)
                if read > DRAIN_MAX_BYTES:
                    break
    except (TimeoutError, Exception):  # noqa: BLE001 — the client left or stalled: nothing more to say to it
        pass
    return read
