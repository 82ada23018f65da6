"""NATS wiring: connect with deadlines, create the streams, request/reply with service errors.

Exceptions:
    ServiceError              a request/reply peer answered with an error (status + ErrorBody)
    ServiceUnavailable        no peer answered in time, or NATS is unreachable (status 503)
    NotPermitted              NATS did not let this client's user publish the request, or read its answer (status 403)
    NotAuthorized             (a ConnectionError) NATS refused the user itself: a wrong password or an unknown user,
                              at connect, or from every server on reconnecting (natsio closes the client then)
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from prometheus_client import Counter
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.micro import add_service
from nats.micro.request import Request

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.kit.logs import Throttle
from switchyard_gateway.kit.natsrefusals import PUBLISH_REFUSED, Client, Refusals
from switchyard_gateway.kit.settings import mask_password, url_list

log = structlog.get_logger()
_error_decoder = msgspec.json.Decoder(ErrorBody)
_encode = msgspec.json.Encoder().encode

DUPLICATE_WINDOW_S = 120.0


def _package_version() -> str:
    """The installed distribution's version, which each service reports in `$SRV.PING` (and so in /health); 0.0.0
    from a tree never installed (NATS micro asks for a semantic version)."""
    try:
        return installed_version("switchyard-gateway")
    except PackageNotFoundError:
        return "0.0.0"


VERSION = _package_version()            # read once, at import
HEADROOM = 4096                 # bytes of a NATS message left for its headers when a body is sized to fit one
_HEADER_BLOCK = len(b"NATS/1.0\r\n\r\n")


def message_size(body: bytes, headers: dict[str, str] | None = None) -> int:
    """What a message counts against the server's `max_payload`: its body and its header block as nats-py sends it
    (`NATS/1.0`, a `Name: value` line per header, a blank line). nats-py checks the body alone; a server that gets
    more than `max_payload` closes the connection."""
    if not headers:
        return len(body)
    lines = sum(len(f"{name.strip()}: {value.strip()}\r\n".encode()) for name, value in headers.items())
    return _HEADER_BLOCK + lines + len(body)


class ServiceError(Exception):
    """A request/reply peer refused the request; `status` is the HTTP status to show."""

    def __init__(self, status: int, body: ErrorBody) -> None:
        super().__init__(f"{status} {body.code}: {body.message}")
        self.status = status
        self.body = body


class Unanswered(Exception):
    """A request that gets no answer at all, not even an error: its reply subject is not the asker's to name (an
    answer there would go to someone else). Counted and logged like a reply subject that is no inbox."""


class ServiceUnavailable(ServiceError):
    """Nobody answered: the owning service or NATS is down."""

    def __init__(self, what: str) -> None:
        super().__init__(503, ErrorBody("SERVICE_UNAVAILABLE", f"{what} is not answering, try again shortly"))


class NotPermitted(ServiceError):
    """NATS refused to let this client's user publish on a subject (a permissions violation): asking again changes
    nothing until the user's permissions do."""

    def __init__(self, subject: str, message: str | None = None) -> None:
        super().__init__(403, ErrorBody("NOT_PERMITTED", message or f"NATS does not let this client's user publish on "
                                                                    f"{subject} (a permissions violation)", "subject"))
        self.subject = subject


class NotAuthorized(ConnectionError):
    """NATS refused the user itself (`Authorization Violation`: a wrong password, or a user it does not know)."""


class ErrorLog:
    """The client's asynchronous errors in the log, each kind at most once every `every_s` with how many came
    since: a subscriber that floods a service with requests whose replies it never reads makes one "slow
    consumer" error per message dropped (half a million lines in ten seconds). It keeps the subjects NATS refused
    the client to publish on (the server names them in lower case), so that a request there that goes unanswered
    is told apart from a service that is down."""

    def __init__(self, every_s: float = 10.0, kinds: int = 100) -> None:
        self.throttle = Throttle(every_s, kinds)
        self.refused: set[str] = set()                    # subjects, lower case

    def heard(self, error: str) -> None:
        kind = error.split(", sid:", 1)[0].split(" on subject ", 1)[0][:200]
        since = self.throttle.due(kind)
        if since is not None:
            log.warning("nats.error", error=error, **({"repeated": since} if since else {}))
        refused = PUBLISH_REFUSED.search(error)
        if refused and len(self.refused) < 100:
            self.refused.add(refused.group(1).lower())


@dataclass
class _Known:
    """What natsio knows of a client `connect` made: its errors, what NATS refused it, and who it connects as."""

    errors: ErrorLog
    refusals: Refusals
    where: str                  # its servers, without the password
    user: str                   # " <user>", or " (none given)"


_known: weakref.WeakKeyDictionary[NATS, _Known] = weakref.WeakKeyDictionary()
_reconnect_listeners: weakref.WeakKeyDictionary[NATS, list[Callable[[], None]]] = weakref.WeakKeyDictionary()
_closing: set[asyncio.Task[None]] = set()
T = TypeVar("T")


def refused(nc: NATS, subject: str) -> bool:
    """Whether NATS refused this client's user to publish on a subject (known of a client `connect` made)."""
    known = _known.get(nc)
    return known is not None and subject.lower() in known.errors.refused


def user_refused(nc: NATS) -> NotAuthorized | None:
    """NotAuthorized once every server refused this client's user on reconnecting (its password changed, or the user
    removed, while it ran: `connect` closed the client then), else None; None for a client `connect` did not make."""
    known = _known.get(nc)
    if known is None or not known.refusals.user_refused.is_set():
        return None
    return NotAuthorized(f"NATS at {known.where} refused the credentials of the user{known.user} on reconnecting: "
                         "Authorization Violation from every server (its password changed, or the user was removed, "
                         "while it ran)")


def on_reconnected(nc: NATS, listener: Callable[[], None]) -> Callable[[], None]:
    """Call `listener` each time the client connects again after losing its connection (whatever the server kept
    for it in memory, its consumers, may be gone); returns what stops that. For a client `connect` did not make,
    its own reconnected callback is kept and called first."""
    listeners = _reconnect_listeners.get(nc)
    if listeners is None:
        listeners = _reconnect_listeners[nc] = []
        if nc not in _known:                      # `connect`'s own callback tells them; else wrap the client's
            theirs = nc._reconnected_cb  # noqa: SLF001 — nats-py reads it at each reconnection

            async def reconnected() -> None:
                if theirs is not None:
                    await theirs()
                _reconnected(nc)

            nc._reconnected_cb = reconnected  # noqa: SLF001
    listeners.append(listener)

    def stop() -> None:
        if listener in listeners:
            listeners.remove(listener)
    return stop


def _reconnected(nc: NATS) -> None:
    for listener in list(_reconnect_listeners.get(nc, ())):
        try:
            listener()
        except Exception:  # noqa: BLE001 — one listener's failure is no other's
            log.exception("nats.reconnect_listener_failed")


async def unless_refused(nc: NATS, work: Awaitable[T]) -> T:
    """Await `work`, unless every server refuses the client's user first (on reconnecting): then `work` is cancelled
    and NotAuthorized raised, rather than waiting for a connection that cannot come back."""
    known = _known.get(nc)
    doing = asyncio.ensure_future(work)
    if known is None:
        return await doing
    refusal = asyncio.ensure_future(known.refusals.user_refused.wait())
    try:
        await asyncio.wait({doing, refusal}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        refusal.cancel()
        if not doing.done():
            doing.cancel()
            await asyncio.gather(doing, return_exceptions=True)
    unauthorized = user_refused(nc)
    if unauthorized is not None and (doing.cancelled() or doing.exception() is not None):
        raise unauthorized from None        # what failed on the way (a closed connection) is its consequence
    return doing.result()


async def connect(url: str, name: str, timeout_s: float = 30.0, inbox_prefix: str | None = None,
                  on_closed: Callable[[NATS], Awaitable[None]] | None = None) -> NATS:
    """Connect to any server of `url` (one URL or a comma-separated list: a cluster's servers), retrying
    until `timeout_s`; once connected, reconnect forever, to whichever server of the list answers.

    nats-py's own initial connect retries without end when the server is down,
    so the deadline is ours. Every server refusing the user is no outage to wait out: at connect, NotAuthorized at
    once; once connected (its password changed, or the user removed, while it ran), the client is closed once every
    server of the list refused it on reconnecting, and `user_refused` says so (`request` raises it, `unless_refused`
    ends what waits on the client). nats-py does not reconnect after a protocol error the server closed the
    connection for (a message over `max_payload`, say): `on_closed` is told whenever the connection is closed for
    good, by anyone, so that a service can tell that from its own close and start again.
    """
    servers = url_list(url)
    where = mask_password(",".join(servers))
    refusals = Refusals(servers, inbox_prefix or "_INBOX")
    known = _Known(ErrorLog(), refusals, where, _user_of(servers[0]))
    connected: list[bool] = []

    async def _on_error(exc: Exception) -> None:
        known.errors.heard(str(exc) or type(exc).__name__)
        refusals.heard(nc, exc)
        if refusals.user_refused.is_set() and connected and not nc.is_closed:   # at connect: given up below
            log.error("nats.user_refused", servers=where, user=known.user.strip(),
                      error="every server refused the credentials on reconnecting")
            closing = asyncio.ensure_future(_close_quietly(nc))     # not from here: it cancels the reconnecting
            _closing.add(closing)
            closing.add_done_callback(_closing.discard)

    async def _on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):          # closed on purpose: nothing went away
            log.warning("nats.disconnected")

    async def _on_reconnect() -> None:
        refusals.connected()
        log.info("nats.reconnected")
        _reconnected(nc)

    async def _on_closed() -> None:
        if on_closed is not None:
            await on_closed(nc)

    nc = Client()
    _known[nc] = known
    inbox = {"inbox_prefix": inbox_prefix} if inbox_prefix else {}     # a user allowed its own inbox only
    connecting = asyncio.ensure_future(nc.connect(
        servers=servers, name=name, connect_timeout=2, reconnect_time_wait=0.5, **inbox,
        max_reconnect_attempts=-1, ping_interval=5, max_outstanding_pings=3,
        error_cb=_on_error, disconnected_cb=_on_disconnect, reconnected_cb=_on_reconnect,
        closed_cb=_on_closed,
    ))
    # nats-py tries the servers in turn, for ever: each of them refusing the user is no outage to wait out
    refused = asyncio.ensure_future(refusals.user_refused.wait())
    try:
        await asyncio.wait({connecting, refused}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        refused.cancel()
        if not connecting.done():
            connecting.cancel()
            await asyncio.wait({connecting})
    failed = None if connecting.cancelled() else connecting.exception()
    if connecting.cancelled() or failed is not None:
        await _close_quietly(nc)
        if failed is not None and not isinstance(failed, (OSError, nats.errors.Error)):
            raise failed
        if refusals.user_refused.is_set():
            raise NotAuthorized(f"NATS at {where} refused the user{known.user}: Authorization Violation "
                                "(a wrong password, or a user it does not know)") from None
        raise ConnectionError(f"NATS at {where} did not answer within {timeout_s:.0f} s") from failed
    refusals.connected()
    connected.append(True)
    return nc


def _user_of(url: str) -> str:
    user = urlsplit(url).username
    return f" {unquote(user)}" if user else " (none given)"


async def _close_quietly(nc: NATS) -> None:
    try:
        await nc.close()
    except Exception:  # noqa: BLE001 — best effort on a failed connection
        pass


async def ensure_streams(nc: NATS, replicas: int = 1, update: bool = True) -> None:
    """Create (or update) every JetStream stream the contracts name. A tool that does not know the stack's settings
    (its streams' replicas) passes `update=False`: it creates what is missing and changes nothing that exists (a
    listing of dead letters scaled every stream of a three-node cluster down to one replica)."""
    js = nc.jetstream(timeout=10)
    for name, stream_subjects in subjects.STREAMS.items():
        config = StreamConfig(
            name=name, subjects=stream_subjects, retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, discard=DiscardPolicy.OLD, num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW_S, max_age=subjects.STREAM_MAX_AGE_S.get(name),
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            if update:
                await js.update_stream(config)


async def request(nc: NATS, subject: str, payload: bytes, timeout_s: float) -> bytes:
    """Send a request; return the reply body or raise ServiceError / ServiceUnavailable. A request too large for one
    NATS message is refused here (413), before anything is sent."""
    service = subject.split(".", 1)[0]
    headers = {subjects.DEADLINE_HEADER: f"{time.time() + timeout_s:.3f}"}
    if message_size(payload, headers) > nc.max_payload:        # the server would close the connection
        raise ServiceError(413, ErrorBody("PAYLOAD_TOO_LARGE", f"the request is larger than the {nc.max_payload} "
                                          f"bytes one message to the {service} service may carry"))
    try:
        msg = await _asked(nc, subject, payload, timeout_s, headers)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError, nats.errors.ConnectionClosedError):
        if (unauthorized := user_refused(nc)) is not None:     # closed: every server refused the user
            raise unauthorized from None
        if refused(nc, subject):                # never passed on: no service was asked
            raise NotPermitted(subject) from None
        raise ServiceUnavailable(service) from None
    headers = msg.headers or {}
    code = headers.get(subjects.SERVICE_ERROR_CODE_HEADER)
    if code:
        try:
            body = _error_decoder.decode(msg.data)
        except msgspec.DecodeError:
            body = ErrorBody("ERROR", headers.get(subjects.SERVICE_ERROR_HEADER, "error"))
        raise ServiceError(int(code), body)
    return msg.data


async def _asked(nc: NATS, subject: str, payload: bytes, timeout_s: float, headers: dict[str, str]) -> Msg:
    """The reply to a request; NotPermitted as soon as NATS refuses the client's user the subject, or the
    subscription its replies come to (known of a client `connect` made), rather than at the timeout: NATS tells it
    to the client's error callback alone, and the request would wait in vain."""
    known = _known.get(nc)
    if known is None:
        return await nc.request(subject, payload, timeout=timeout_s, headers=headers)
    refusal = known.refusals.waiting_on(subject)
    asking = asyncio.ensure_future(nc.request(subject, payload, timeout=timeout_s, headers=headers))
    try:
        await asyncio.wait({asking, refusal}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        known.refusals.forget(subject, refusal)
        if not asking.done():
            asking.cancel()
    if asking.done() and not asking.cancelled():
        return asking.result()
    kind, what = refusal.result()
    if kind == "publish":
        raise NotPermitted(subject)
    raise NotPermitted(what, f"NATS does not let this client's user subscribe to its inbox {what} (a permissions "
                             f"violation): the answers to its requests cannot reach it")


# A service answers only on an inbox (`_INBOX.` as the clients name them, `_INBOX_<user>.` for a subscriber's user):
# the reply subject is the asker's to choose, and a service publishes as the services' user, who may publish
# anywhere; an outside subscriber asking with its reply set to a stream's subject had the answer stored there.
REPLY_PREFIXES = ("_INBOX.", "_INBOX_")
REFUSED_REPLIES = Counter("switchyard_nats_replies_refused_total",
                          "Requests not answered: their reply subject was not an inbox, or not the asker's own",
                          ["service"])
EXPIRED = Counter("switchyard_nats_requests_expired_total",
                  "Requests not carried out: their asker had stopped waiting (its deadline passed before they came)",
                  ["service"])
_refusals = Throttle(10.0)          # a flood of them writes a line every 10 s per service
_expiries = Throttle(10.0)
MAX_REPLY_CHARS = 1024               # of a reply subject answered at all
MAX_ERROR_BYTES = 16 * 1024          # an error answer larger is cut down (msgspec echoes the value it refused):
MAX_ERROR_CHARS = 1000               # its message to this many characters, its problems to 20
MAX_ERROR_HEADER_CHARS = 200         # ... and of its copy in the Nats-Service-Error header
DEADLINE_SLACK_S = 0.5               # a request is carried out until this long after its deadline (clocks differ)


def expired(req: Request) -> bool:
    """Whether the asker of a request has stopped waiting for it (its `Switchyard-Deadline` has passed): it was told
    the service is unavailable, so doing it now would do what the asker was told was not done (a command held up
    by a frozen NATS node and delivered after its 503, or one that waited its turn longer than its asker)."""
    deadline = deadline_of(req)
    return deadline is not None and time.time() > deadline + DEADLINE_SLACK_S


def deadline_of(req: Request) -> float | None:
    """The Unix time a request's asker stops waiting (its `Switchyard-Deadline`), None if it named none."""
    deadline = (req.headers or {}).get(subjects.DEADLINE_HEADER)
    try:
        return float(deadline) if deadline is not None else None
    except ValueError:
        return None


_asker_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("asker_deadline", default=None)


def asker_deadline() -> float | None:
    """In a `serve` handler: the Unix time the asker of the request it handles stops waiting for the answer, None
    if it named none. A handler that waits its turn, or makes calls that may take long, stops short of it: what it
    would do after is what the asker was told was not done."""
    return _asker_deadline.get()


def _refuse_reply(service: str, subject: str, reason: str = "the reply subject is not an inbox") -> None:
    REFUSED_REPLIES.labels(service).inc()
    since = _refusals.due(service)
    if since is not None:
        log.warning("service.reply_refused", service=service, subject=subject, reason=reason,
                    **({"repeated": since} if since else {}))


Handler = Callable[[bytes], Awaitable[bytes]]
# A handler that also reads the subject it was asked on (a wildcard endpoint) and the request's reply subject ("" if
# none); None: it answered elsewhere itself, and the requester, if it waits, gets an empty reply.
SubjectHandler = Callable[[bytes, str, str], Awaitable[bytes | None]]


async def serve(nc: NATS, name: str, endpoints: dict[str, Handler], version: str = VERSION,
                instance: str = "", role: str = "", by_subject: dict[str, SubjectHandler] | None = None,
                at_once: dict[str, int] | None = None,
                reply_rules: dict[str, Callable[[str, str], str | None]] | None = None,
                shares: dict[str, tuple[Callable[[str], str], int]] | None = None) -> object:
    """Expose handlers as a NATS micro service in one queue group; ServiceError becomes error headers. Each
    copy answers `$SRV.PING` with its `instance` (replicas tell themselves apart by it) and `role` (the router's
    leader says so) in its metadata. `by_subject` handlers are given the request's subject and reply subject too.

    An endpoint's requests are handled one after another, each awaited before the next is read, unless `at_once`
    gives its subject a number: then up to that many are handled at once, each in a task of its own (a slow one
    holds up no other), and one more is refused 503 `BUSY` at once; `shares` gives such a subject (who asks, from
    the subject; how many of one asker's at most), and an asker's request past its share is refused as busy before
    it takes one of the subject's places.

    Nothing is answered on a reply subject that is not an inbox, nor, for an endpoint `reply_rules` names, on one
    its rule (subject asked on, reply subject) gives a reason against: checked first, before a refusal for being
    busy. No answer is larger than one NATS message (the server closes a connection that sends one): an error's
    message is cut to MAX_ERROR_CHARS, an answer too large becomes a 500 `ANSWER_TOO_LARGE`."""
    metadata = {key: value for key, value in (("instance", instance), ("role", role)) if value}
    service = await add_service(nc, name=name, version=version, queue_group=name, metadata=metadata)

    Rule = Callable[[str, str], str | None]

    def unanswerable(req: Request, rule: Rule | None) -> str | None:
        """Why a request gets no answer at all (its reply subject is not the asker's), else None: asked before
        anything else, a refusal for being busy included."""
        reply_to = req._msg.reply  # noqa: SLF001
        if reply_to and not reply_to.startswith(REPLY_PREFIXES):
            return "the reply subject is not an inbox"
        if reply_to and len(reply_to) > MAX_REPLY_CHARS:      # an answer's protocol line must stay within 4 KiB
            return "the reply subject is too long"
        return rule(req.subject, reply_to) if rule is not None and reply_to else None

    async def answer(req: Request, status: int, body: ErrorBody) -> None:
        """An error answer that always fits one message: one echoing a huge request is cut short."""
        data = _encode(body)
        if len(data) > MAX_ERROR_BYTES:
            problems = [msgspec.structs.replace(p, path=p.path[:200], message=p.message[:200])
                        for p in (body.problems or [])[:20]] or None
            body = msgspec.structs.replace(body, message=body.message[:MAX_ERROR_CHARS] + "…",
                                           field=(body.field or "")[:200] or None, problems=problems)
            data = _encode(body)
        await req.respond_error(str(status), " ".join(body.message[:MAX_ERROR_HEADER_CHARS].split()), data=data)

    def wrap(handler: Handler | SubjectHandler, with_subject: bool = False,
             rule: Rule | None = None) -> Callable[[Request], Awaitable[None]]:
        async def endpoint(req: Request) -> None:
            why = unanswerable(req, rule)
            if why is not None:
                _refuse_reply(name, req.subject, why)
                return
            if expired(req):
                EXPIRED.labels(name).inc()
                if (since := _expiries.due(name)) is not None:
                    log.warning("service.request_expired", service=name, subject=req.subject, held_back=since)
                return
            told = _asker_deadline.set(deadline_of(req))
            try:
                reply = await (handler(req.data, req.subject, req._msg.reply or "")  # type: ignore[call-arg]  # noqa: SLF001
                               if with_subject else handler(req.data))  # type: ignore[call-arg]
            except Unanswered as exc:
                _refuse_reply(name, req.subject, str(exc))
                return
            except ServiceError as exc:
                await answer(req, exc.status, exc.body)
            except msgspec.ValidationError as exc:
                await answer(req, 400, ErrorBody("VALIDATION_ERROR", str(exc), field_of(str(exc))))
            except msgspec.DecodeError as exc:
                await answer(req, 400, ErrorBody("INVALID_JSON", f"Malformed JSON: {exc}"))
            except RecursionError:
                await answer(req, 400, ErrorBody("INVALID_JSON", "The request is nested too deeply to read"))
            except Exception as exc:  # noqa: BLE001 — one edge translates every failure
                log.exception("service.handler_failed", service=name)
                await answer(req, 500, ErrorBody("INTERNAL", f"{type(exc).__name__} in {name}"))
            else:
                if not req._msg.reply:  # noqa: SLF001 — a page published elsewhere may have been asked without a reply
                    return
                if message_size(reply or b"") > nc.max_payload:      # the server would close the connection
                    log.error("service.answer_too_large", service=name, subject=req.subject, size=len(reply or b""),
                              max_payload=nc.max_payload)
                    await answer(req, 500, ErrorBody("ANSWER_TOO_LARGE", f"the answer of {name} is larger than one "
                                                     f"NATS message ({nc.max_payload:,} bytes); ask for less"))
                    return
                await req.respond(reply or b"")
            finally:
                _asker_deadline.reset(told)
        return endpoint

    def concurrently(endpoint: Callable[[Request], Awaitable[None]], limit: int, rule: Rule | None = None,
                     share: tuple[Callable[[str], str], int] | None = None) -> Callable[[Request], Awaitable[None]]:
        running: set[asyncio.Task[None]] = set()
        in_hand: collections.Counter[str] = collections.Counter()       # per asker, with `share`

        async def refuse(req: Request, message: str) -> None:
            why = unanswerable(req, rule)
            if why is not None:
                _refuse_reply(name, req.subject, why)
            elif req._msg.reply:  # noqa: SLF001
                await answer(req, 503, ErrorBody("BUSY", message))

        def done(task: asyncio.Task[None], asker: str | None) -> None:
            running.discard(task)
            if asker is not None:
                in_hand[asker] -= 1
                if not in_hand[asker]:
                    del in_hand[asker]

        async def start(req: Request) -> None:
            if len(running) >= limit:
                await refuse(req, f"{name} is handling {limit} such requests already; retry shortly")
                return
            asker = None
            if share is not None:
                who, most = share
                asker = who(req.subject)
                if in_hand[asker] >= most:       # refused before it takes a slot: one asker leaves room for others
                    await refuse(req, f"{asker} has {most} requests in hand already; retry shortly")
                    return
                in_hand[asker] += 1
            task = asyncio.create_task(endpoint(req))
            running.add(task)
            task.add_done_callback(lambda finished: done(finished, asker))
        return start

    for subject, handler in endpoints.items():
        endpoint = wrap(handler)
        if at_once and subject in at_once:
            endpoint = concurrently(endpoint, at_once[subject])
        await service.add_endpoint(name=subject.replace(".", "-"), subject=subject, handler=endpoint)
    for subject, subject_handler in (by_subject or {}).items():
        rule = (reply_rules or {}).get(subject)
        endpoint = wrap(subject_handler, with_subject=True, rule=rule)
        if at_once and subject in at_once:
            endpoint = concurrently(endpoint, at_once[subject], rule, (shares or {}).get(subject))
        await service.add_endpoint(name=subject.replace(".", "-").replace("*", "any").replace(">", "rest"),
                                   subject=subject, handler=endpoint)
    return service


def field_path(message: str) -> str | None:
    """The whole path of the body field a msgspec error is about: `messages[0].content` from '... - at
    `$.messages[0].content`', and for an object missing a field or holding one it does not have, that field
    under it (`messages[0].role` from 'Object missing required field `role` - at `$.messages[0]`'); None when it
    names none. A key of an object that is wrong ('... - at `key` in `$.metadata`') names the object."""
    _, keyed, held = message.rpartition(" - at `key` in `$")
    if keyed:
        return held.rstrip("`").lstrip(".") or None
    _, at, path = message.rpartition(" - at `$")
    path = path.rstrip("`").lstrip(".") if at else ""
    named = (message.partition("missing required field `")[2] or message.partition("contains unknown field `")[2]) \
        .partition("`")[0]
    if named:
        return f"{path}.{named}" if path else named
    return path or None


def field_of(message: str) -> str | None:
    """The top-level body field a msgspec error is about (`messages` for `messages[0].role`); None when it names
    none."""
    path = field_path(message)
    return path.split("[", 1)[0] if path is not None else None
