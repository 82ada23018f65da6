"""Dead letters: events a consumer could not decode or apply, set aside on `DEADLETTER` so that it moves on.

Every consumer of the events kit (the usage ingest, folds of a stream or of the log) and every subscriber
built on `switchyard_gateway.subscribe` puts what it cannot take on `event.dead_lettered.v1.<consumer>`, the
message (or the one event of a batch) whole, with the error. `switchyard events dead-letters --retry` asks
for it to be taken again: an `EventRetryRequested` on `event.retry_requested.v1.<consumer>`, which the consumer
follows and takes once, and, for what the usage ingest set aside, the same message published again on its subject.
`EventWithheld` stands in a stream, or in a replay page, for a row of the log too large for one NATS message: no
fold reads it as an event, so each sets it aside here like any message it cannot decode; the subscriber kit hands it
to `apply` in the row's place.
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

import msgspec

from switchyard_gateway.contracts import subjects as s
from switchyard_gateway.contracts.events import Event

Stage = Literal["decode", "apply"]
LOG_SOURCE = "log"       # `source` of an event read from the event log (through replay or the LOG stream)


class EventDeadLettered(Event, frozen=True, tag=s.EVENT_DEAD_LETTERED):
    """A consumer could not decode or apply an event and set it aside to go on; the event is kept here whole."""

    consumer: str                   # who set it aside: `metering`, `gateway:REGISTRY`, a subscriber's name
    stage: Stage                    # decode: not an event this consumer can read; apply: its handler failed
    error: str                      # the exception's type and message, one line
    source: str                     # the stream it was read from (USAGE, REGISTRY, ...), or `log`
    subject: str = ""               # the subject it was published on
    sequence: int = 0               # its stream sequence, or (source `log`) its log position
    data: bytes = b""               # the message body as received, or the one event of a batch that failed
    headers: dict[str, str] = msgspec.field(default_factory=dict)     # the message's headers

    @property
    def identifier(self) -> str:
        return self.consumer


class EventRetryRequested(Event, frozen=True, tag=s.EVENT_RETRY_REQUESTED):
    """An operator asked a consumer to take a dead letter again, once whatever made it fail is fixed."""

    consumer: str
    dead_letter: int                # the DEADLETTER stream sequence of the dead letter
    source: str
    subject: str = ""
    sequence: int = 0
    data: bytes = b""
    headers: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def identifier(self) -> str:
        return self.consumer


EVENT_CLASSES: tuple[type[Event], ...] = (EventDeadLettered, EventRetryRequested)

# the `type` of a stand-in, not of an event: never stored, never a channel of its own, in no union of events
EVENT_WITHHELD = "event.withheld.v1"


class EventWithheld(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type", tag=EVENT_WITHHELD):
    """A row of the log sent as this marker because, as the message that would carry it, it is larger than the NATS
    server's `max_payload`; it goes in the row's place so that what follows the log holds every position, in order.
    An outbox publishes it on `<its type>._` with the row's event id as `Nats-Msg-Id`, the LOG feed on the row's
    `log.<type>.<tenant>` with its positions header, a replay page among the events with the row's position. The
    row itself stays in the log: read it there by position, or by replay once the limit allows it."""

    event_id: UUID                  # the row's
    event_type: str                 # the row's `type` column
    position: int                   # the row's log position
    size_bytes: int                 # the message the row would have made: its payload and headers, or its page
    max_payload: int                # the server's limit it exceeded
    withheld_by: str                # `registry.outbox`, `quota.outbox`, the LOG feed `log.feed`, or a replay page
                                    # `metering.replay.v1`
    tenant: str | None = None       # the row's `tenant` column, where the withholder reads it (the feed, replay pages)
