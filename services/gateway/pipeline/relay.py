"""One upstream attempt: send the call, then relay the answer to the client, reading its usage on the way.

An attempt ends in one of three ways: the client got an answer, the upstream
failed before any byte reached the client (`Failed`: the caller may retry or fall
back), or the upstream broke off after bytes reached the client (answered with an
error event: no fallback is possible then). An upstream that has not started its
answer (its response head, and for a stream its first event) within the
endpoint's first-byte timeout has failed with `timeout`, whatever the idle gap
between chunks allows later; one that refuses the gateway's credentials (401,
403) has failed too, as `502 upstream_auth`: the caller can do nothing about it.
Every 5xx and 429 is the endpoint's refusal (the caller may retry it); any other
status but 200 and the client's own 4xx (a redirect, a 2xx that is not the
answer, a 1xx) is an endpoint misconfigured, and a 200 whole answer that is not a
JSON object, holds only an `error`, or comes coded (gzip) although the gateway
asked for it as it is, is no answer: each fails the attempt, never reaching the client.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, NoReturn

import msgspec
import structlog

from switchyard_gateway import http1
from switchyard_gateway.contracts.events import EndpointRegistered
from switchyard_gateway.kit.deadline import Deadline
from switchyard_gateway.services.gateway.edge.errors import UpstreamError
from switchyard_gateway.services.gateway.pipeline import upstream
from switchyard_gateway.services.gateway.pipeline.call import Call, Outcome
from switchyard_gateway.services.gateway.translate.plans import Plan, TranslationError, openai_error_to_ollama
from switchyard_gateway.services.gateway.translate.sse import estimated_output
from switchyard_gateway.services.gateway.translate.wire import Times, TokenCounts, believable, error_message

log = structlog.get_logger()

RETRYABLE_STATUS = frozenset({429, *range(500, 600)})     # the endpoint's refusal: retried, then the next endpoint
MAX_ANSWER_BYTES = 128 * 1024 * 1024      # a whole answer is read into memory: an endpoint's runaway one is bounded
ERROR_DETAIL_BYTES = 1024 * 1024          # a refusal's body, read for its message
AUTH_STATUS = frozenset({401, 403})
RETRY_AFTER_MAX_S = 3600                  # an upstream's Retry-After further ahead is not passed on to the client
# failures before the first response byte: (attempt outcome, status shown if no endpoint is left, what it did)
_CONNECT_FAILURES = {
    http1.ConnectFailed: ("refused", 502, "did not answer (refused)"),
    http1.ReadTimeout: ("timeout", 504, "did not answer (timeout)"),
    http1.ResponseCut: ("cut", 502, "did not answer (cut)"),
    http1.NoResponse: ("cut", 502, "closed the connection without answering"),
}
_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")     # Retry-After's delay-seconds (a fraction tolerated)


class Failed(Exception):
    """The attempt failed before the client saw a byte; `retry_after_s` is the upstream's hint, if any."""

    def __init__(self, error: UpstreamError, outcome: str, retry_after_s: float | None = None) -> None:
        super().__init__(str(error))
        self.error, self.outcome, self.retry_after_s = error, outcome, retry_after_s


def endpoint_failed(endpoint_id: str, what: str, said: str = "", *, status: int = 502,
                    headers: dict[str, str] | None = None) -> UpstreamError:
    """An endpoint's failure: operators are told what it said too, a tenant's caller only what happened
    (`GatewayError.for_member`). A server's own words are the operator's: a hosted API's 429 names the operator's
    organisation, a server's 500 its hosts and paths."""
    error = UpstreamError(f"Endpoint '{endpoint_id}' {what}" + (f": {said}" if said else ""), status=status,
                          headers=headers)
    if said:
        error.member_message = f"Endpoint '{endpoint_id}' {what}"
    return error


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
        result, status, what = _CONNECT_FAILURES.get(type(exc), ("error", 502, "did not answer (error)"))
        report(result, 0, started)
        raise Failed(endpoint_failed(endpoint.endpoint_id, what, status=status), result) from None
    if to.answered is not None:
        to.answered()
    try:
        status = response.status
        if status == 200:
            coding = _coding(response.headers)
            if coding is not None:          # asked for as it is (Accept-Encoding: identity): unreadable otherwise
                report("error", status, started)
                raise Failed(endpoint_failed(endpoint.endpoint_id, "answered something unreadable",
                                             f"a body sent with {coding}"), "error")
        elif status in RETRYABLE_STATUS:
            await _refused(response, endpoint, report, started)
        elif status in AUTH_STATUS:
            report("error", status, started)
            log.warning("upstream.credentials_refused", endpoint=endpoint.endpoint_id, status=status,
                        request_id=call.request_id)
            raise Failed(UpstreamAuthFailed(endpoint.endpoint_id, status), "auth")
        elif not 400 <= status < 500:       # the client's own error (4xx) is relayed; anything else is no answer
            _misconfigured(call, response, endpoint, report, started)
        if call.request.stream and status == 200 and to.plan.stream is not None:
            await _relay_stream(call, outcome, to, response, proto, started, Deadline(loop, task, deadline))
        else:
            await _relay_body(call, outcome, to, response, proto, started)
    finally:
        response.release()


def _no_first_byte(to: Attempt, status: int, started: float) -> Failed:
    """The answer did not start in time: a failure for the breaker (`timeout`), and the call moves on."""
    to.report("timeout", status, started)
    return Failed(endpoint_failed(to.endpoint.endpoint_id, f"did not start its answer within {to.first_byte_s:g} s",
                                  status=504), "timeout")


async def _refused(response: http1.Response, endpoint: EndpointRegistered,
                   report: Callable[[str, int, float], None], started: float) -> None:
    try:
        detail = await response.read(ERROR_DETAIL_BYTES, endpoint.timeout_s)
    except http1.TransportError:            # cut, too slow, or larger than any error message needs
        detail = b""
    outcome = "http_429" if response.status == 429 else "http_5xx"
    report(outcome, response.status, started)
    wait_s, retry_after = _seconds(response.headers.get("retry-after"))
    error = endpoint_failed(endpoint.endpoint_id, f"answered {response.status}", detail[:200].decode(errors="replace"),
                            status=response.status if response.status == 429 else 502,
                            headers={"retry-after": retry_after} if retry_after else None)
    raise Failed(error, outcome, wait_s)


def _misconfigured(call: Call, response: http1.Response, endpoint: EndpointRegistered,
                   report: Callable[[str, int, float], None], started: float) -> NoReturn:
    """A status that is neither an answer (200), a refusal (5xx, 429, 401, 403) nor the client's error (4xx): a
    redirect (an http:// URL the server sends to https://), a 2xx that is not the answer, a 1xx. The endpoint is
    misconfigured: its failure (`error`, for its breaker), and the call moves on at once."""
    report("error", response.status, started)
    log.warning("upstream.unusable_status", endpoint=endpoint.endpoint_id, status=response.status,
                location=response.headers.get("location"), request_id=call.request_id)
    raise Failed(endpoint_failed(endpoint.endpoint_id, f"answered HTTP {response.status}, which is no answer to an "
                                 f"inference call"), "error")


def _coding(headers: dict[str, str]) -> str | None:
    """The content or transfer coding (other than chunked) of an answer, which the gateway asked for as it is and
    cannot read coded; None for a plain one."""
    coding = headers.get("content-encoding")
    if coding is not None and coding.strip().lower() not in ("", "identity"):
        return f"Content-Encoding: {coding}"
    coding = headers.get("transfer-encoding")
    if coding is not None and coding.replace(" ", "").lower() not in ("chunked", "identity"):
        return f"Transfer-Encoding: {coding}"
    return None


class _Whole(msgspec.Struct):
    """What a whole answer holds: an `error`, and the members that carry an answer (OpenAI's `choices` and `data`,
    Ollama's `message`, `response`, `embeddings` and `embedding`), kept unread."""

    error: Any = None
    choices: msgspec.Raw = msgspec.Raw(b"")
    data: msgspec.Raw = msgspec.Raw(b"")
    message: msgspec.Raw = msgspec.Raw(b"")
    response: msgspec.Raw = msgspec.Raw(b"")
    embeddings: msgspec.Raw = msgspec.Raw(b"")
    embedding: msgspec.Raw = msgspec.Raw(b"")


_decode_whole = msgspec.json.Decoder(_Whole).decode


class _Said(msgspec.Struct):
    """What a message holds that the model wrote (kept unread: only their size is wanted)."""

    content: msgspec.Raw = msgspec.Raw(b"")
    tool_calls: msgspec.Raw = msgspec.Raw(b"")
    reasoning_content: msgspec.Raw = msgspec.Raw(b"")
    reasoning: msgspec.Raw = msgspec.Raw(b"")
    thinking: msgspec.Raw = msgspec.Raw(b"")

    def size(self) -> int:
        """Reasoning under both names (vLLM keeps the old `reasoning_content` beside `reasoning`) is one text."""
        return len(self.content) + len(self.tool_calls) + max(len(self.reasoning_content), len(self.reasoning)) \
            + len(self.thinking)


class _SaidChoice(msgspec.Struct):
    message: _Said | None = None
    text: msgspec.Raw = msgspec.Raw(b"")


class _Written(msgspec.Struct):
    """What a whole chat or completion answer holds that the model wrote: OpenAI's choices, Ollama's message or
    response."""

    choices: list[_SaidChoice] = []
    message: _Said | None = None
    response: msgspec.Raw = msgspec.Raw(b"")


_decode_written = msgspec.json.Decoder(_Written).decode


def _written_tokens(data: bytes) -> int:
    """A whole answer's output when the upstream reported no believable counts: a token per 4 bytes of what the
    model wrote (its text, tool calls and reasoning, as JSON; `Outcome.estimate_tokens` holds it to what the call
    was held to), rounded up as a stream's is (`estimated_output`), and at least one. The whole answer's bytes
    counted its wrapping too: "ok" was 45 to 66 tokens."""
    try:
        written = _decode_written(data)
        size = sum(choice.message.size() if choice.message is not None else len(choice.text)
                   for choice in written.choices)
        size += (written.message.size() if written.message is not None else 0) + len(written.response)
    except (msgspec.MsgspecError, RecursionError):
        size = len(data)
    return max(1, estimated_output(size))


def _no_answer(data: bytes) -> tuple[str, str] | None:
    """Why a 200 whole answer that reported no token counts is no answer (not a JSON object, or only an `error`):
    what happened and what the endpoint said; or None: it is one. Answers with counts were read as JSON objects
    already; only these are read again."""
    try:
        whole = _decode_whole(data)
    except (msgspec.MsgspecError, RecursionError) as exc:
        return "answered something unreadable", f"not a JSON object ({exc})"
    if whole.error is not None and not (whole.choices or whole.data or whole.message or whole.response
                                        or whole.embeddings or whole.embedding):
        return "answered an error", error_message(whole.error)[:200] or "without a message"
    return None


async def _relay_body(call: Call, outcome: Outcome, to: Attempt, response: http1.Response, proto: Any,
                      started: float) -> None:
    plan = to.plan
    try:
        data = await response.read(to.max_answer_bytes, to.endpoint.timeout_s)
    except http1.AnswerTooLarge:
        to.report("error", response.status, started)
        raise Failed(endpoint_failed(to.endpoint.endpoint_id, f"answered more than {to.max_answer_bytes} bytes"),
                     "error") from None
    except http1.AnswerTooSlow:             # begun, so it read the prompt: billed as a cut answer is
        to.report("timeout", response.status, started)
        outcome.cut_answering = True
        raise Failed(endpoint_failed(to.endpoint.endpoint_id, f"did not finish its answer within "
                                     f"{to.endpoint.timeout_s:g} s of starting it", status=504), "timeout") from None
    except http1.TransportError as exc:
        to.report("cut", response.status, started)
        outcome.cut_answering = True
        raise Failed(endpoint_failed(to.endpoint.endpoint_id, "cut its answer", type(exc).__name__), "cut") from None
    status = response.status
    content_type = response.headers.get("content-type", "application/json")
    if status == 200:
        counts = plan.usage(data)   # read as a JSON object when it has counts, as nearly every answer has
        if counts is None:
            problem = _no_answer(data)
            if problem is not None:
                to.report("error", status, started)
                raise Failed(endpoint_failed(to.endpoint.endpoint_id, *problem), "error")
        usage = believable(counts)
        if usage is not None:
            outcome.input_tokens, outcome.output_tokens, outcome.cached_tokens = usage
        else:                       # a whole answer without believable counts: its output estimated from what the
            ask = call.ask          # model wrote (more than none, which let an upstream's answers go free)
            outcome.estimate_tokens(call, 0 if ask is None or ask.embedding else _written_tokens(data))
        if plan.answer is not None:
            times = _times(call, started)
            if usage is None:       # a translated answer shows what the log will record
                times = times._replace(estimate=TokenCounts(outcome.input_tokens, outcome.output_tokens))
            try:
                answer = plan.answer(data, call.request.model or "", times)
            except TranslationError as exc:
                to.report("error", status, started)
                outcome.input_tokens = outcome.output_tokens = outcome.cached_tokens = 0   # no answer: nothing spent
                outcome.estimated = False
                raise Failed(endpoint_failed(to.endpoint.endpoint_id, "answered something unreadable", str(exc)),
                             "error") from None
    to.report("ok" if status == 200 else "http_4xx", status, started)
    if status == 200:
        if plan.answer is not None:
            data, content_type = answer, "application/json"
        if call.cache_key is not None and not call.short:       # an answer a nearly spent quota cut short is this
            outcome.answer = (data, content_type)               # moment's, not the one the question deserves
    else:                           # the client's error (4xx), in the door's shape
        outcome.result = "error"
        if _coding(response.headers) is not None:
            data = b""              # coded although asked for as it is: its message is unreadable
        if plan.error is not None:
            data, content_type = plan.error(data, status), "application/json"
        elif call.door.ollama:      # the native Ollama plans relay errors; an HTML page or text is wrapped
            data, content_type = openai_error_to_ollama(data, status), "application/json"
    outcome.status = status
    outcome.mark_first_byte()
    proto.response_bytes(status, [("content-type", content_type), *outcome.response_headers(call)], data)


async def _relay_stream(call: Call, outcome: Outcome, to: Attempt, response: http1.Response, proto: Any,
                        started: float, first_byte: Deadline) -> None:
    """Relay events as they come; the first one must come by the `first_byte` deadline, the rest within the idle
    gap."""
    assert to.plan.stream is not None
    tap = outcome.stream_tap = to.plan.stream(call.request.model or "", _times(call, started))
    transport = None
    failed_early = False
    reported: TokenCounts | None = None     # the upstream's counts, once believed
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
            if tap.error is not None:       # the upstream failed inside its stream and said so (already relayed)
                raise _FailedInStream(tap.error)
            if not tap.done:
                raise http1.ResponseCut("the stream ended before its last event")
            reported = believable(tap.usage)
            if reported is None:                # no counts came: the client is shown the gateway's, as recorded
                outcome.estimate_tokens(call, output_tokens=tap.content_events)
                tap.estimate = TokenCounts(outcome.input_tokens, outcome.output_tokens)
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
    except _FailedInStream as exc:
        to.report("error", 200, started)
        if transport is None:               # said before anything reached the client: the caller may fall back
            failed_early = True
            raise Failed(endpoint_failed(to.endpoint.endpoint_id, "failed its stream", str(exc)), "error") from None
        outcome.result = "error"            # the client has the upstream's error in its door's shape: no cut event
        log.warning("upstream.stream_error", endpoint=to.endpoint.endpoint_id, request_id=call.request_id,
                    error=str(exc)[:300])
    except http1.TransportError as exc:
        runaway = isinstance(exc, http1.AnswerTooLarge)     # an event without end: the endpoint's failure, as for
        to.report("error" if runaway else "cut", 200, started)      # a whole answer too large
        if transport is None:       # nothing reached the client: the caller may still fall back
            failed_early = True
            error = endpoint_failed(to.endpoint.endpoint_id, "sent an event without end", str(exc)) if runaway \
                else endpoint_failed(to.endpoint.endpoint_id, "cut its stream before any event")
            raise Failed(error, "error" if runaway else "cut") from None
        outcome.result = "error"
        log.warning("upstream.stream_cut", endpoint=to.endpoint.endpoint_id, request_id=call.request_id,
                    error=type(exc).__name__)
        silent = isinstance(exc, http1.ReadTimeout)      # it went quiet longer than its timeout: a timeout's status
        await _send(outcome, transport, call.door.cut_event(f"The upstream stream was cut: {type(exc).__name__}",
                                                            504 if silent else 502))
    finally:
        # granian (SWITCHYARD_HTTP_SERVER=granian) ends a streamed response when its transport is released; an
        # upstream error's traceback can outlive this frame, so let go of the transport explicitly.
        transport = None
        if reported is None and not failed_early:
            reported = believable(tap.usage)     # a stream that broke off: what its counts were, if any came
        if failed_early:
            pass
        elif reported is not None:
            outcome.input_tokens, outcome.output_tokens, outcome.cached_tokens = reported
        else:
            outcome.estimate_tokens(call, output_tokens=tap.content_events)


class _FailedInStream(Exception):
    """The upstream sent an error inside its stream (a chunk or line holding `error`), the stream's end."""


def _times(call: Call, sent: float) -> Times:
    """When the call arrived and when this attempt was sent, on the clock translated answers measure with."""
    return Times(int(call.started * 1e9), int(sent * 1e9))


def _start_stream(call: Call, outcome: Outcome, proto: Any) -> Any:
    """Send the stream's head: from now the call's status is 200, whatever follows (a client that leaves before
    it is 499, a failure before it the error's status)."""
    outcome.status = 200
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


def _seconds(value: str | None) -> tuple[float | None, str | None]:
    """An upstream's Retry-After read: (seconds from now to wait, what to pass on to the client). Its
    delay-seconds are passed on rounded up to whole seconds, its HTTP date as an IMF-fixdate, each only if at most
    RETRY_AFTER_MAX_S ahead (the gateway's own Retry-After, if any, stands); anything else (`1e400`, `-1`, `soon`)
    is neither waited for nor passed on. A delay too large for a float is infinite: longer than any wait."""
    if not value:
        return None, None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        wait_s = float(value)
        return wait_s, str(math.ceil(wait_s)) if wait_s <= RETRY_AFTER_MAX_S else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None, None
    if when.tzinfo is None:                 # asctime's form and `-0000` name no zone: HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    wait_s = max(0.0, (when - datetime.now(UTC)).total_seconds())
    return wait_s, format_datetime(when.astimezone(UTC), usegmt=True) if wait_s <= RETRY_AFTER_MAX_S else None
