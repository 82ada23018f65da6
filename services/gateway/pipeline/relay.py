"""One upstream attempt: send the call, then relay the answer to the client, reading its usage on the way.

An attempt ends in one of three ways: the client got an answer, the upstream
failed before any byte reached the client (`Failed`: the caller may retry or fall
back), or the upstream broke off after bytes reached the client (answered with an
error event: no fallback is possible then). An upstream that has not started its
answer (its response head, and for a stream its first event) within the
endpoint's first-byte timeout has failed with `timeout`, whatever the idle gap
between chunks allows later; one that refuses the gateway's credentials (401,
403) has failed too, as `502 upstream_auth`: the caller can do nothing about it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from switchyard_gateway import http1
from switchyard_gateway.contracts.events import EndpointRegistered
from switchyard_gateway.kit.deadline import Deadline
from switchyard_gateway.services.gateway.edge.errors import UpstreamError
from switchyard_gateway.services.gateway.pipeline import upstream
from switchyard_gateway.services.gateway.pipeline.call import Call, Outcome
from switchyard_gateway.services.gateway.translate.plans import Plan, TranslationError
from switchyard_gateway.services.gateway.translate.wire import Times, believable

log = structlog.get_logger()

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_ANSWER_BYTES = 128 * 1024 * 1024      # a whole answer is read into memory: an endpoint's runaway one is bounded
ERROR_DETAIL_BYTES = 1024 * 1024          # a refusal's body, read for its message
AUTH_STATUS = frozenset({401, 403})
# failures before the first response byte: (attempt outcome, status shown if no endpoint is left)
_CONNECT_FAILURES = {
    http1.ConnectFailed: ("refused", 502),
    http1.ReadTimeout: ("timeout", 504),
    http1.ResponseCut: ("cut", 502),
}


class Failed(Exception):
    """The attempt failed before the client saw a byte; `retry_after_s` is the upstream's hint, if any."""

    def __init__(self, error: UpstreamError, outcome: str, retry_after_s: float | None = None) -> None:
        super().__init__(str(error))
        self.error, self.outcome, self.retry_after_s = error, outcome, retry_after_s


class ClientGone(Exception):
    """The client went away while we answered."""


class UpstreamAuthFailed(UpstreamError):
    """502: an endpoint refused the gateway's own credentials; callers are not told which endpoint."""

    code = "upstream_auth"

    def __init__(self, endpoint_id: str, upstream_status: int, message: str | None = None) -> None:
        super().__init__(message or "The model server refused the gateway's credentials; an operator must fix them",
                         status=502)
        self.endpoint_id, self.upstream_status = endpoint_id, upstream_status

    def for_admin(self) -> UpstreamAuthFailed:
        """The same error naming the endpoint and what it answered, for an operator's eyes."""
        return UpstreamAuthFailed(self.endpoint_id, self.upstream_status,
                                  f"Endpoint '{self.endpoint_id}' refused the gateway's credentials "
                                  f"(HTTP {self.upstream_status}): check its api_key_ref")


class Attempt:
    """One endpoint as failover tries it: how the door speaks to its kind, the upstream request, how long its
    answer may take to start, and where each try's result goes (`report(outcome, status, started)`, for the
    router's breakers)."""

    __slots__ = ("endpoint", "plan", "path", "payload", "report", "first_byte_s", "answered", "max_answer_bytes")

    def __init__(self, endpoint: EndpointRegistered, plan: Plan, path: str, payload: bytes,
                 report: Callable[[str, int, float], None], first_byte_s: float = 60.0,
                 answered: Callable[[], None] | None = None, max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self.endpoint, self.plan, self.path, self.payload, self.report = endpoint, plan, path, payload, report
        self.first_byte_s = first_byte_s
        self.max_answer_bytes = max_answer_bytes  # a whole (not streamed) answer larger is the endpoint's failure
        self.answered = answered              # told when the endpoint's answer starts (its head came)


async def attempt(pool: http1.Pool, call: Call, outcome: Outcome, to: Attempt, proto: Any,
                  loop: asyncio.AbstractEventLoop) -> None:
    """Call the endpoint and relay its answer the way the door's plan says; raise Failed to let the caller
    retry or fall back. `loop` is the running one, handed down (looking it up costs a system call here)."""
    endpoint, report = to.endpoint, to.report
    started = time.perf_counter()
    task = asyncio.current_task(loop)
    assert task is not None
    deadline = loop.time() + to.first_byte_s
    try:
        async with Deadline(loop, task, deadline):
            response = await pool.request("POST", upstream.url(endpoint, to.path), to.payload,
                                          upstream.request_headers(endpoint), endpoint.timeout_s)
    except TimeoutError:
        raise _no_first_byte(to, 0, started) from None
    except http1.TransportError as exc:
        result, status = _CONNECT_FAILURES.get(type(exc), ("error", 502))
        report(result, 0, started)
        raise Failed(UpstreamError(f"Endpoint '{endpoint.endpoint_id}' did not answer ({result})",
                                   status=status), result) from None
    if to.answered is not None:
        to.answered()
    try:
        if response.status in RETRYABLE_STATUS:
            await _refused(response, endpoint, report, started)
        if response.status in AUTH_STATUS:
            report("error", response.status, started)
            log.warning("upstream.credentials_refused", endpoint=endpoint.endpoint_id, status=response.status,
                        request_id=call.request_id)
            raise Failed(UpstreamAuthFailed(endpoint.endpoint_id, response.status), "auth")
        if call.request.stream and response.status == 200 and to.plan.stream is not None:
            await _relay_stream(call, outcome, to, response, proto, started, Deadline(loop, task, deadline))
        else:
            await _relay_body(call, outcome, to, response, proto, started)
    finally:
        response.release()


def _no_first_byte(to: Attempt, status: int, started: float) -> Failed:
    """The answer did not start in time: a failure for the breaker (`timeout`), and the call moves on."""
    to.report("timeout", status, started)
    return Failed(UpstreamError(f"Endpoint '{to.endpoint.endpoint_id}' did not start its answer within "
                                f"{to.first_byte_s:g} s", status=504), "timeout")


async def _refused(response: http1.Response, endpoint: EndpointRegistered,
                   report: Callable[[str, int, float], None], started: float) -> None:
    try:
        detail = await response.read(ERROR_DETAIL_BYTES, endpoint.timeout_s)
    except http1.TransportError:            # cut, too slow, or larger than any error message needs
        detail = b""
    outcome = "http_429" if response.status == 429 else "http_5xx"
    report(outcome, response.status, started)
    retry_after = response.headers.get("retry-after")
    error = UpstreamError(
        f"Endpoint '{endpoint.endpoint_id}' answered {response.status}: {detail[:200].decode(errors='replace')}",
        status=response.status if response.status == 429 else 502,
        headers={"retry-after": retry_after} if retry_after else None)
    raise Failed(error, outcome, _seconds(retry_after))


async def _relay_body(call: Call, outcome: Outcome, to: Attempt, response: http1.Response, proto: Any,
                      started: float) -> None:
    plan = to.plan
    try:
        data = await response.read(to.max_answer_bytes, to.endpoint.timeout_s)
    except http1.AnswerTooLarge:
        to.report("error", response.status, started)
        raise Failed(UpstreamError(f"Endpoint '{to.endpoint.endpoint_id}' answered more than "
                                   f"{to.max_answer_bytes} bytes"), "error") from None
    except http1.AnswerTooSlow:             # begun, so it read the prompt: billed as a cut answer is
        to.report("timeout", response.status, started)
        outcome.cut_answering = True
        raise Failed(UpstreamError(f"Endpoint '{to.endpoint.endpoint_id}' did not finish its answer within "
                                   f"{to.endpoint.timeout_s:g} s of starting it", status=504), "timeout") from None
    except http1.TransportError as exc:
        to.report("cut", response.status, started)
        outcome.cut_answering = True
        raise Failed(UpstreamError(f"Endpoint '{to.endpoint.endpoint_id}' cut its answer: {type(exc).__name__}"),
                     "cut") from None
    status = response.status
    content_type = response.headers.get("content-type", "application/json")
    if status == 200 and plan.answer is not None:
        try:
            answer = plan.answer(data, call.request.model or "", _times(call, started))
        except TranslationError as exc:
            to.report("error", status, started)
            raise Failed(UpstreamError(f"Endpoint '{to.endpoint.endpoint_id}' answered something unreadable: "
                                       f"{exc}"), "error") from None
    to.report("ok" if status < 400 else "http_4xx", status, started)
    if status == 200:
        usage = believable(plan.usage(data))
        if usage is not None:
            outcome.input_tokens, outcome.output_tokens, outcome.cached_tokens = usage
        else:                       # a whole answer without believable counts: its output taken as a token per 4
            ask = call.ask          # bytes, as text runs (more than none, which let an upstream's answers go free)
            outcome.estimate_tokens(call, 0 if ask is None or ask.embedding else max(1, len(data) // 4))
        if plan.answer is not None:
            data, content_type = answer, "application/json"
        if call.cache_key is not None and not call.short:       # an answer a nearly spent quota cut short is this
            outcome.answer = (data, content_type)               # moment's, not the one the question deserves
    else:
        outcome.result = "error"
        if plan.error is not None:
            data, content_type = plan.error(data, status), "application/json"
    outcome.status = status
    outcome.mark_first_byte()
    proto.response_bytes(status, [("content-type", content_type), *outcome.response_headers(call)], data)


async def _relay_stream(call: Call, outcome: Outcome, to: Attempt, response: http1.Response, proto: Any,
                        started: float, first_byte: Deadline) -> None:
    """Relay events as they come; the first one must come by the `first_byte` deadline, the rest within the idle
    gap."""
    assert to.plan.stream is not None
    tap = outcome.stream_tap = to.plan.stream(call.request.model or "", _times(call, started))
    outcome.status = 200
    transport = None
    failed_early = False
    try:
        async with first_byte:
            try:
                async for chunk in response:
                    out = tap.feed(chunk)
                    if not out:
                        continue
                    if transport is None:
                        first_byte.clear()
                        transport = _start_stream(call, outcome, proto)
                    outcome.delivered = tap.done  # a client may hang up once it has the last event (OpenAI's SDK does)
                    await _send(outcome, transport, out)
                out = tap.ended()           # the body ended: a last event or line without its terminator is whole
                if out:
                    if transport is None:
                        first_byte.clear()
                        transport = _start_stream(call, outcome, proto)
                    outcome.delivered = tap.done
                    await _send(outcome, transport, out)
            except http1.TransportError:
                if not tap.done:
                    raise
                # cut after its last event, before its body's end: the answer is whole
            first_byte.clear()
            if not tap.done:
                raise http1.ResponseCut("the stream ended before its last event")
            tail = tap.finish()
            to.report("ok", 200, started)
            if transport is None:
                transport = _start_stream(call, outcome, proto)
            outcome.delivered = True
            if tail:
                await _send(outcome, transport, tail)
    except asyncio.CancelledError:
        if outcome.delivered:                # the client left after the last event: the upstream answered
            to.report("ok", 200, started)
        raise
    except TimeoutError:
        failed_early = True                 # only possible before anything reached the client
        raise _no_first_byte(to, 200, started) from None
    except http1.TransportError as exc:
        runaway = isinstance(exc, http1.AnswerTooLarge)     # an event without end: the endpoint's failure, as for
        to.report("error" if runaway else "cut", 200, started)      # a whole answer too large
        if transport is None:       # nothing reached the client: the caller may still fall back
            failed_early = True
            endpoint_id = to.endpoint.endpoint_id
            message = f"Endpoint '{endpoint_id}': {exc}" if runaway else \
                f"Endpoint '{endpoint_id}' cut its stream before any event"
            raise Failed(UpstreamError(message), "error" if runaway else "cut") from None
        outcome.result = "error"
        log.warning("upstream.stream_cut", endpoint=to.endpoint.endpoint_id, request_id=call.request_id,
                    error=type(exc).__name__)
        await _send(outcome, transport, call.door.cut_event(f"The upstream stream was cut: {type(exc).__name__}"))
    finally:
        # granian (SWITCHYARD_HTTP_SERVER=granian) ends a streamed response when its transport is released; an
        # upstream error's traceback can outlive this frame, so let go of the transport explicitly.
        transport = None
        reported = None if failed_early else believable(tap.usage)
        if failed_early:
            pass
        elif reported is not None:
            outcome.input_tokens, outcome.output_tokens, outcome.cached_tokens = reported
        else:
            outcome.estimate_tokens(call, output_tokens=tap.content_events)


def _times(call: Call, sent: float) -> Times:
    """When the call arrived and when this attempt was sent, on the clock translated answers measure with."""
    return Times(int(call.started * 1e9), int(sent * 1e9))


def _start_stream(call: Call, outcome: Outcome, proto: Any) -> Any:
    outcome.mark_first_byte()
    return proto.response_stream(200, [
        ("content-type", call.door.stream_content_type), ("cache-control", "no-cache"),
        *outcome.response_headers(call),
    ])


async def _send(outcome: Outcome, transport: Any, data: bytes) -> None:
    """Send a stream chunk; if the client has gone, stop the relay (the call is cancelled unless delivered)."""
    try:
        await transport.send_bytes(data)
    except Exception as exc:  # noqa: BLE001 — each server raises its own error on a closed client
        raise ClientGone() from exc


def _seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
