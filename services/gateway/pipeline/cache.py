"""The response cache: exact-match answers kept in Valkey, so a repeated call is answered without an upstream.

Off unless `SWITCHYARD_CACHE` says `embeddings` (embedding calls) or `all` (also non-streamed chat and
completion calls). An answer is kept per tenant, front-door path, model and request body byte for byte,
for `SWITCHYARD_CACHE_TTL_S`. A client can opt out per call with `Cache-Control: no-cache` (answer
afresh, keep the new answer) or `no-store` (neither read nor keep). Only 200 answers of the model
asked for are kept, never a fallback's. The cache is an accelerator, never a dependency: a lookup
that fails or takes longer than `SWITCHYARD_CACHE_TIMEOUT_S` is a miss, a failed store is dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import msgspec

from switchyard_gateway.resp import Valkey, ValkeyError
from switchyard_gateway.services.gateway import metrics
from switchyard_gateway.services.gateway.metrics import EMBEDDING_APIS
from switchyard_gateway.services.gateway.pipeline.background_writes import BackgroundWrites
from switchyard_gateway.services.gateway.settings import CACHE_MODES



class CachedAnswer(msgspec.Struct, array_like=True, frozen=True):
    """What a hit replays: the bytes the client got and their content type."""

    body: bytes
    content_type: str


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(CachedAnswer).decode


class ResponseCache(BackgroundWrites):
    """Looks answers up before dispatch and keeps fresh ones afterwards, without making the client wait."""

    def __init__(self, valkey: Valkey, prefix: str, mode: str, ttl_s: float, max_bytes: int,
                 timeout_s: float) -> None:
        if mode not in CACHE_MODES:
            raise ValueError(f"SWITCHYARD_CACHE must be one of {', '.join(CACHE_MODES)}, not {mode!r}")
        super().__init__(valkey)
        self.prefix, self.mode = prefix, mode
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.max_bytes, self.timeout_s = max_bytes, timeout_s

    def applies(self, api: str, stream: bool) -> bool:
        """Whether calls of this API may be cached at all under the configured mode."""
        if self.mode == "off" or stream:
            return False
        return self.mode == "all" or api in EMBEDDING_APIS

    def key(self, path: str, tenant_id: str, model_id: str, body: bytes) -> str:
        digest = hashlib.sha256(b"%s\0%s\0%s" % (path.encode(), model_id.encode(), body)).hexdigest()
        return f"{self.prefix}{tenant_id}:{digest}"

    async def lookup(self, key: str, api: str, model_id: str) -> CachedAnswer | None:
        """The kept answer, or None (a miss, including a Valkey that is slow or down)."""
        metrics.count_cache_lookup(api, model_id)
        try:
            async with asyncio.timeout(self.timeout_s):
                raw = await self.valkey.call("GET", key)
        except (ConnectionError, ValkeyError, TimeoutError) as exc:
            self._warn("cache.lookup_failed", exc)
            return None
        if raw is None:
            return None
        try:
            answer = _decode(raw)
        except (msgspec.DecodeError, RecursionError):
            return None                 # written by an incompatible version: answer afresh, and overwrite
        metrics.count_cache_hit(api, model_id)
        return answer

    def store(self, key: str, answer: CachedAnswer) -> None:
        """Keep an answer in the background; the call has already been answered."""
        if len(answer.body) > self.max_bytes:
            return
        self._in_background(self._store(key, _encode(answer)))

    async def _store(self, key: str, value: bytes) -> None:
        try:
            async with asyncio.timeout(max(self.timeout_s, 1.0)):
                await self.valkey.call("SET", key, value, "PX", self.ttl_ms)
        except (ConnectionError, ValkeyError, TimeoutError) as exc:
            self._warn("cache.store_failed", exc)



def directives(headers: Any) -> tuple[bool, bool]:
    """(read, write) allowed by the request's Cache-Control: `no-cache` skips the read, `no-store` both."""
    value = headers.get("cache-control")
    if not value:
        return True, True
    tokens = {part.strip().lower() for part in value.split(",")}
    if "no-store" in tokens:
        return False, False
    return "no-cache" not in tokens, True
