"""Dead letters: an event a consumer cannot decode or apply is set aside on DEADLETTER, counted, and the consumer goes on.

    letters = DeadLetters(nc, consumer="metering")
    await letters.put(stage="decode", error=exc, source="USAGE", subject=msg.subject, sequence=seq, data=msg.data)

A failure is the event's own (`poisonous`) when taking the event again would fail again: it does not decode, its
handler raised, or PostgreSQL refused its data. A network or database outage is not: consumers retry those and
set nothing aside. `put` returns once JetStream stored the dead letter, so a consumer moves past the event only
when it is kept; the same event set aside twice (the consumer died in between) is stored once within the
stream's duplicate window.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from prometheus_client import Counter

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decode_event, encode
from switchyard_gateway.contracts.deadletters import EventDeadLettered, Stage
from switchyard_gateway.contracts.events import Event, subject_of
from switchyard_gateway.events.door import Door
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.retry import TRANSIENT

log = structlog.get_logger()

DEAD_LETTERS = Counter("switchyard_dead_letters_total",
                       "Events set aside on DEADLETTER because they could not be decoded or applied",
                       ["consumer", "stage"])
# SQLSTATE classes that belong to the data, not to the database's state: data exceptions, integrity constraints,
# routine and trigger errors (`RAISE` in PL/pgSQL), WITH CHECK OPTION violations.
POISON_SQLSTATES = ("22", "23", "2F", "38", "39", "P0", "44")
ERROR_MAX = 500          # characters of an error kept in a dead letter


class Poison(Exception):
    """A failure that taking the same event again would repeat (wraps the original as its cause)."""


def poisonous(exc: BaseException) -> bool:
    """Whether a failure is the event's own rather than an outage's (the network, PostgreSQL away or restarting)."""
    if isinstance(exc, Poison):
        return True
    if isinstance(exc, nats.errors.Error):          # NATS away, an ack or a dead letter not stored: an outage
        return False
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in POISON_SQLSTATES
    return isinstance(exc, Exception) and not isinstance(exc, TRANSIENT)


def describe(exc: BaseException) -> str:
    """An error on one line: its type and message (the cause's, for a Poison), at most ERROR_MAX characters."""
    if isinstance(exc, Poison) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= ERROR_MAX else text[:ERROR_MAX - 1] + "…"


HEADROOM = 256           # bytes a letter leaves of `max_payload` (a header the server or client may add)


def fitted(letter: EventDeadLettered, msg_id: str, max_payload: int,
           max_data: int | None = None) -> EventDeadLettered:
    """The letter as one NATS message can carry it with its message id: whole if it fits; else as much of its data
    as fits (its error says so), and if its other fields alone do not fit, those cut too (the error to ERROR_MAX
    characters, 32 headers, a 1 KiB subject). A letter larger than a message closed the connection that published
    it (a body near the limit grows by a third in base64, and by the letter's fields).

    `max_data`: a letter whose event the log keeps whole (a subscriber's) keeps at most that much of it, and its
    other fields cut as above, whatever the limit: such letters stay small (a subscriber's 1,000 of them 64 MiB)."""
    limit = max_payload - HEADROOM

    def size(one: EventDeadLettered) -> int:
        return natsio.message_size(encode(one), {subjects.MSG_ID_HEADER: msg_id})

    def cut(text: str) -> str:
        return text if len(text) <= ERROR_MAX else text[:ERROR_MAX - 1] + "…"

    def few(headers: dict[str, str]) -> dict[str, str]:
        return {name[:128]: value[:512] for name, value in list(headers.items())[:32]}

    note = ""
    if max_data is not None:
        if len(letter.data) > max_data:
            note = f" [data cut to {max_data:,} of {len(letter.data):,} bytes: the log holds the event whole]"
        letter = msgspec.structs.replace(letter, data=letter.data[:max_data], error=cut(letter.error),
                                         headers=few(letter.headers), subject=letter.subject[:1024])
    if size(letter) + len(note) <= limit:
        return msgspec.structs.replace(letter, error=letter.error + note) if note else letter
    bare = msgspec.structs.replace(letter, data=b"")
    if size(bare) > limit - 200:
        bare = msgspec.structs.replace(bare, error=cut(letter.error), headers=few(letter.headers),
                                       subject=letter.subject[:1024])
        note += " [its error, headers and subject cut to fit one message]"
    room = (limit - size(bare) - len(note) - 120) * 3 // 4       # base64: 4 characters for 3 bytes; 120 for the note
    keep = max(0, min(len(letter.data), room))
    if keep < len(letter.data):
        note = f" [data cut to {keep:,} of {len(letter.data):,} bytes to fit one message]" + note
    return msgspec.structs.replace(bare, data=letter.data[:keep], error=bare.error + note)


class DeadLetters:
    """Where one consumer sets events aside: `event.dead_lettered.v1.<consumer>` on DEADLETTER."""

    def __init__(self, nc: NATS, consumer: str, timeout_s: float = 5.0, door: Door | None = None) -> None:
        self.nc, self.consumer, self.timeout_s = nc, consumer, timeout_s
        self.door = door                     # a subscriber's: metering stores its letters

    async def put(self, *, stage: Stage, error: BaseException | str, source: str, subject: str = "",
                  sequence: int = 0, data: bytes = b"", headers: dict[str, str] | None = None, key: str = "") -> int:
        """Store one dead letter and count it; return its DEADLETTER sequence. `key` tells apart events of one
        message set aside one by one (an event id); raises when NATS does not store it (the caller keeps the
        event and tries again later)."""
        text = error if isinstance(error, str) else describe(error)
        letter = EventDeadLettered(consumer=self.consumer, stage=stage, error=text, source=source, subject=subject,
                                   sequence=sequence, data=data,
                                   headers={k: v for k, v in (headers or {}).items() if isinstance(v, str)})
        msg_id = f"{self.consumer}:{source}:{sequence}:{stage}:{key}"
        letter = fitted(letter, msg_id, self.nc.max_payload)
        if self.door is not None:
            sequence = await self.door.set_aside(letter, msg_id, self.timeout_s)
        else:
            sequence = (await self.nc.jetstream(timeout=self.timeout_s).publish(
                subject_of(letter), encode(letter), headers={subjects.MSG_ID_HEADER: msg_id})).seq
        DEAD_LETTERS.labels(self.consumer, stage).inc()
        log.warning("events.dead_lettered", consumer=self.consumer, stage=stage, source=source, sequence=sequence,
                    subject=subject, error=text, dead_letter=sequence)
        return sequence


SetAside = Callable[[bytes, BaseException, str], Awaitable[object]]     # (the bytes, the error, which item)


async def events_of(data: bytes, set_aside: SetAside | None) -> list[Event]:
    """A message body's events one by one: each item that does not decode is handed to `set_aside` (its bytes,
    the error, its index in the batch) and left out; a body that is no JSON at all is handed over whole."""
    try:
        items = msgspec.json.decode(data, type=list[msgspec.Raw]) if data[:1] == b"[" else [msgspec.Raw(data)]
    except Exception as exc:  # noqa: BLE001 — not JSON: the whole body is the poison
        if set_aside is not None:
            await set_aside(data, exc, "")
        return []
    events = []
    for index, item in enumerate(items):
        try:
            events.append(decode_event(bytes(item)))
        except Exception as exc:  # noqa: BLE001 — this item alone
            if set_aside is not None:
                await set_aside(bytes(item), exc, str(index))
    return events
