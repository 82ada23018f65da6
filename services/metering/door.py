"""The subscriber's door: everything an outside subscriber does on NATS, done by metering on its behalf.

    metering.subscriber.v1.<user>.<name>.<tenant, or _all>.<op>      op: replay, follow, unfollow, set_aside

A subscriber's NATS user may publish on its own door's subjects and read its own inbox (`_INBOX_<user>.`), nothing
else (`libs/kit/nats_auth.py`), so the subject says who asks: the user, the subscriber's name (its dead letters and
retries) and the tenant whose events it may read. Metering answers only on the asker's own inbox (a request whose
reply subject is anyone else's gets no answer at all), and does what was asked only within the subject:

- `replay`: a page of the log (`history.answer`), of the tenant's events; delivered, if asked, under the asker's inbox.
- `follow`: an ephemeral push consumer that metering makes, on LOG filtered to subjects within the tenant's
  (`log.<type>.<tenant>`), or on DEADLETTER filtered to the name's retries, delivering under the asker's inbox;
  at most `MAX_FOLLOWS` of one user's on a stream, counted on the stream (whichever metering replica made them).
  The consumer's settings are metering's, not the asker's.
- `unfollow`: delete one of the user's own consumers.
- `set_aside`: store a dead letter of the name's own on DEADLETTER (its data at most MAX_LETTER_DATA bytes: the
  log holds the event whole, and the kit reads it from there when it retries; at most `MAX_LETTERS` of one name's
  waiting to be retried, so that one subscriber's letters take at most about 64 MiB).

One user has at most `PER_USER` requests in hand at once in each metering replica (`natsio.serve`'s `shares`: one
more is refused 503 `BUSY` before it takes one of the replica's `AT_ONCE` places for the door), so that one flooding
the door leaves room for the others; a request whose reply subject is not the user's own gets no answer even then.

Why not let subscribers use JetStream's API themselves, as before: NATS permissions see subjects, never payloads or
reply subjects, and JetStream answers on whatever reply subject a request names. A user allowed to make consumers
could have JetStream's answers (and the acknowledgements of the dead letters it published) stored in the services'
own streams, make consumers that deliver the log into the services' request subjects, and make as many durable
consumers as it liked.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime

import msgspec
import nats.js.errors
import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decoder, encode
from switchyard_gateway.contracts.deadletters import LOG_SOURCE
from switchyard_gateway.contracts.events import subject_of
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.contracts.metering import Follow, Following, SetAside, SetAsideDone, Unfollow
from switchyard_gateway.events.deadletter import fitted
from switchyard_gateway.kit.nats_auth import RESERVED_NAMES, USER, inbox_prefix
from switchyard_gateway.kit.natsio import ServiceError, Unanswered
from switchyard_gateway.services.metering import history as pages

log = structlog.get_logger()

SUBJECT = f"{subjects.METERING_SUBSCRIBER}.*.*.*.*"
AT_ONCE = 64                           # requests handled side by side (one more: 503 BUSY)
PER_USER = 8                           # of them, one user's at most
MAX_LETTERS = 1_000                    # dead letters of one name waiting to be retried on DEADLETTER
MAX_LETTER_DATA = 64 * 1024            # of a subscriber's letter's data (its event, which the log holds whole)
MAX_FOLLOWS = 8                        # consumers one user may have on one stream at a time
FOLLOWED = (subjects.STREAM_LOG, subjects.STREAM_DEADLETTER)     # the streams a subscriber may follow
INACTIVE_S = 30.0                      # a consumer whose inbox went quiet this long is removed by the server
TOKEN = r"[A-Za-z0-9_%-]+"
LOG_FILTER = re.compile(rf"^{subjects.LOG_PREFIX}(\.({TOKEN}|\*)){{3}}\.({TOKEN}|\*)\Z")

_follow, _unfollow, _set_aside = decoder(Follow), decoder(Unfollow), decoder(SetAside)


@dataclass(frozen=True)
class Asker:
    """Who asks, as the door's subject says: the NATS user, the subscriber's name (a subject token) and the tenant
    whose events it may read (None: every tenant's)."""

    user: str
    name: str
    tenant: str | None
    op: str

    @property
    def inbox(self) -> str:
        """The prefix of every subject the user may read, with its dot (the services' clients: `_INBOX.`)."""
        return f"{inbox_prefix(self.user)}."

    @property
    def consumer_prefix(self) -> str:
        """The start of the names of this user's consumers: the user's length first, so that no user's names
        begin another's (`a` and `a_b`)."""
        return f"sub{len(self.user)}_{self.user}_"


def asker_of(subject: str) -> Asker:
    _, _, _, user, name, scope, op = subject.split(".")
    if not USER.match(user):
        raise ServiceError(400, ErrorBody("VALIDATION_ERROR", "the user token must be 1 to 64 of A-Z a-z 0-9 _ -",
                                          "subject"))
    if op not in subjects.SUBSCRIBER_OPS:
        raise ServiceError(400, ErrorBody("VALIDATION_ERROR", f"unknown operation {op[:40]!r}: one of "
                                          f"{', '.join(subjects.SUBSCRIBER_OPS)}", "subject"))
    return Asker(user, name, None if scope == subjects.SUBSCRIBER_ALL else pages.unescaped(scope), op)


def user_of(subject: str) -> str:
    """Who asks through the door (its share of the door's places is PER_USER)."""
    return f"user {subject.split('.')[3]}"


def reply_rule(subject: str, reply: str) -> str | None:
    """Why a request through the door gets no answer at all: its reply subject is not under the asking user's
    inbox (checked before anything, a refusal for being busy or of the request itself included)."""
    user = subject.split(".")[3]
    if not USER.match(user):
        return "the subject names no user"
    inbox = Asker(user, "", None, "").inbox
    return None if reply.startswith(inbox) else f"the reply subject is not under {inbox}, the asking user's inbox"


_following: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)   # one follow of a user at a time here


async def on_request(history: pages.History, data: bytes, subject: str, reply: str = "") -> bytes | None:
    """One request through the door; no answer at all when its reply subject is not the asker's own inbox (served
    with `reply_rule`, natsio has refused it already, even when busy)."""
    why = reply_rule(subject, reply) if reply else None
    if why is not None:
        raise Unanswered(why)
    return await _handle(history, asker_of(subject), data, reply)


async def _handle(history: pages.History, asker: Asker, data: bytes, reply: str) -> bytes | None:
    try:
        match asker.op:
            case "replay":
                return await pages.answer(history, data, asker.tenant, reply, inbox=asker.inbox)
            case "follow":
                async with _following[asker.user]:        # counted and made one at a time: the cap holds
                    return encode(Following(await follow(history, asker, _follow.decode(data))))
            case "unfollow":
                await unfollow(history, asker, _unfollow.decode(data))
                return b""
            case _:
                return encode(SetAsideDone(await set_aside(history, asker, _set_aside.decode(data))))
    except nats.js.errors.BadRequestError as exc:       # what JetStream refused of it: the asker's to mend
        raise _refused("subjects" if asker.op == "follow" else "request",
                       f"JetStream refused it: {exc.description or exc}") from None


def _refused(field: str, message: str, status: int = 400, code: str = "VALIDATION_ERROR") -> ServiceError:
    return ServiceError(status, ErrorBody(code, message, field))


def _filters_problem(asker: Asker, ask: Follow) -> str | None:
    if ask.stream == subjects.STREAM_DEADLETTER:
        own = f"{subjects.EVENT_RETRY_REQUESTED}.{asker.name}"
        return None if ask.subjects == [own] else f"on {subjects.STREAM_DEADLETTER} only your own retries: [{own!r}]"
    tenant = subjects.subject_token(asker.tenant) if asker.tenant else None
    for i, one in enumerate(ask.subjects):
        for other in ask.subjects[:i]:
            if _overlap(one, other):
                return f"{one[:120]!r} and {other[:120]!r} overlap: give filters that no subject matches twice"
    for filter_subject in ask.subjects:
        whole = filter_subject == f"{subjects.LOG_PREFIX}.>" and tenant is None
        if not whole and not (LOG_FILTER.match(filter_subject)
                              and (tenant is None or filter_subject.rsplit(".", 1)[1] == tenant)):
            scope = f"ending in your tenant, {tenant}" if tenant else f"or {subjects.LOG_PREFIX}.>"
            return (f"{filter_subject[:120]!r} is not a LOG filter you may follow: {subjects.LOG_PREFIX}.<type: three "
                    f"tokens or *>.<tenant>, {scope}")
    return None


def _overlap(one: str, other: str) -> bool:
    """Whether some subject matches both filters (`*` a token, `>` the rest)."""
    a, b = one.split("."), other.split(".")
    for x, y in zip(a, b):
        if x == ">" or y == ">":
            return True
        if x != y and "*" not in (x, y):
            return False
    return len(a) == len(b)


async def follow(history: pages.History, asker: Asker, ask: Follow) -> str:
    """Make the consumer a `Follow` asks for, delivering under the asker's inbox; its name."""
    if ask.stream not in FOLLOWED:
        raise _refused("stream", f"follow {' or '.join(FOLLOWED)}")
    if not pages.named_subject_ok(ask.deliver_to, asker.inbox):
        raise _refused("deliver_to", f"deliver_to must be a subject under your inbox, {asker.inbox}, without "
                                     "wildcards")
    problem = _filters_problem(asker, ask)
    if problem:
        raise _refused("subjects", problem)
    held = await _held(history, asker, ask.stream)
    if held >= MAX_FOLLOWS:
        raise _too_many(asker, ask.stream, held)
    name = f"{asker.consumer_prefix}{uuid.uuid4().hex[:12]}"
    one = ask.subjects[0] if len(ask.subjects) == 1 else None
    config = ConsumerConfig(
        name=name, deliver_subject=ask.deliver_to, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=ask.sequence, filter_subject=one, filter_subjects=None if one else list(ask.subjects),
        ack_policy=AckPolicy.NONE, max_deliver=1, flow_control=False, idle_heartbeat=ask.heartbeat_s,
        mem_storage=True, num_replicas=1, inactive_threshold=INACTIVE_S,
    )
    js = history.nc.jetstream(timeout=5)
    made = await js.add_consumer(ask.stream, config)
    # Another metering replica may have made some of the user's meanwhile (a replica makes one user's follows one at
    # a time, the replicas together do not). JetStream's creation times order them all: a consumer with MAX_FOLLOWS
    # of the user's made before it gives way. Every standing one made earlier is there when a later one looks, so
    # the (MAX_FOLLOWS + 1)th standing one would have seen MAX_FOLLOWS before it: no more stand.
    ahead = await _made_before(history, ask.stream, asker.consumer_prefix, (made.created, name))
    if ahead >= MAX_FOLLOWS:
        await js.delete_consumer(ask.stream, name)
        raise _too_many(asker, ask.stream, ahead)
    log.info("door.followed", user=asker.user, subscriber=asker.name, stream=ask.stream, consumer=name,
             sequence=ask.sequence, filters=len(ask.subjects))
    return name


async def _held(history: pages.History, asker: Asker, stream: str) -> int:
    """How many consumers of the asker's user the stream has, whichever metering replica made them."""
    return sum(name.startswith(asker.consumer_prefix) for name in await _consumer_names(history, stream))


async def _made_before(history: pages.History, stream: str, prefix: str, mine: tuple[datetime, str]) -> int:
    """How many consumers named with `prefix` JetStream made before `mine` (its creation time and name)."""
    js = history.nc.jetstream(timeout=5)
    ahead = 0
    for name in await _consumer_names(history, stream):
        if name.startswith(prefix) and name != mine[1]:
            try:
                info = await js.consumer_info(stream, name)
            except nats.js.errors.NotFoundError:            # gone meanwhile (given way, or unfollowed)
                continue
            ahead += (info.created, name) < mine
    return ahead


def _too_many(asker: Asker, stream: str, held: int) -> ServiceError:
    return _refused("stream", f"user {asker.user} follows {stream} {held} times already (at most {MAX_FOLLOWS}); "
                              f"unfollow one, or wait {INACTIVE_S:.0f} s for one whose inbox went quiet to go", 429,
                    "TOO_MANY_CONSUMERS")


async def unfollow(history: pages.History, asker: Asker, ask: Unfollow) -> None:
    if ask.stream not in FOLLOWED:
        raise _refused("stream", f"unfollow {' or '.join(FOLLOWED)}")
    if not ask.consumer.startswith(asker.consumer_prefix) or not USER.match(ask.consumer[len(asker.consumer_prefix):]):
        raise _refused("consumer", "not a consumer of yours", 403, "FORBIDDEN")
    try:
        await history.nc.jetstream(timeout=5).delete_consumer(ask.stream, ask.consumer)
    except Exception as exc:  # noqa: BLE001 — gone already (its inbox went quiet) is what was asked
        if "not found" not in str(exc).lower():
            raise


async def set_aside(history: pages.History, asker: Asker, ask: SetAside) -> int:
    """Store the asker's dead letter on DEADLETTER, once per message id, cut to fit one message; its sequence."""
    letter = ask.letter
    if subjects.subject_token(letter.consumer) != asker.name or letter.consumer in RESERVED_NAMES:
        raise _refused("letter.consumer", "a dead letter of your own name only", 403, "FORBIDDEN")
    if letter.source != LOG_SOURCE:
        raise _refused("letter.source", f"a subscriber's dead letter is of an event of the log: source {LOG_SOURCE!r}")
    if not 0 <= letter.sequence < 2**63:
        raise _refused("letter.sequence", "letter.sequence must be a log position")
    if not ask.msg_id.startswith(f"{letter.consumer}:{LOG_SOURCE}:"):
        raise _refused("msg_id", f"msg_id must start with the letter's consumer and ':{LOG_SOURCE}:'")
    subject = subject_of(letter)
    retried = f"{subjects.EVENT_RETRY_REQUESTED}.{asker.name}"
    js = history.nc.jetstream(timeout=5)
    stored = (await js.stream_info(subjects.STREAM_DEADLETTER,
                                   subjects_filter=f"*.*.*.{asker.name}")).state.subjects or {}
    waiting = stored.get(subject, 0) - stored.get(retried, 0)       # letters not yet asked back, about
    if waiting >= MAX_LETTERS:
        raise _refused("letter", f"{waiting:,} dead letters of {letter.consumer} wait to be retried; retry or remove "
                                 "some (switchyard events dead-letters --retry/--remove) first", 429,
                       "TOO_MANY_DEAD_LETTERS")
    # the kit reads the event again from the log when it retries it: the letter keeps MAX_LETTER_DATA of it
    letter = fitted(letter, ask.msg_id, history.nc.max_payload, max_data=MAX_LETTER_DATA)
    ack = await js.publish(subject, encode(letter), headers={subjects.MSG_ID_HEADER: ask.msg_id})
    return ack.seq


async def _consumer_names(history: pages.History, stream: str) -> list[str]:
    """Every consumer's name on a stream, page by page."""
    names: list[str] = []
    while True:
        msg = await history.nc.request(f"$JS.API.CONSUMER.NAMES.{stream}", json.dumps({"offset": len(names)}).encode(),
                                       timeout=5)
        body = msgspec.json.decode(msg.data)
        if "error" in body:
            raise RuntimeError(f"listing {stream}'s consumers: {body['error'].get('description', body['error'])}")
        found = body.get("consumers") or []
        names += found
        if not found or len(names) >= body.get("total", 0):
            return names
