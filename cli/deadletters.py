"""`switchyard events dead-letters`: list the events consumers set aside on DEADLETTER, and send them back.

A retry is an `event.retry_requested.v1.<consumer>` on DEADLETTER: subscribers and the folds of a stream or of the
log follow their own and take each once. The usage ingest, a durable consumer, takes it as the message published
again on its subject instead, under a message id of its own so that JetStream's duplicate window does not drop it
(its append skips what the log holds); a fold's would reach every fold of that stream, after later events.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

import msgspec
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.deadletters import LOG_SOURCE, EventDeadLettered, EventRetryRequested
from switchyard_gateway.contracts.events import subject_of

REPUBLISHED = frozenset({subjects.CONSUMER_METERING})   # consumers that take a retry as the message published again
_letter = msgspec.json.Decoder(EventDeadLettered)
_retry = msgspec.json.Decoder(EventRetryRequested)
FETCH = 500
SHOWN_SKIPPED = 20      # sequences of skipped entries named in the line that reports them


@dataclass
class Letter:
    """A dead letter as stored, with its DEADLETTER sequence and the sequences of the retries asked for it.
    `forged`: the consumer it names is not the one whose subject it was written on (a subscriber may write only
    its own; one naming `metering` or a service's fold would have the retry publish or apply what it holds)."""

    id: int
    letter: EventDeadLettered
    retries: list[int] = field(default_factory=list)
    forged: bool = False


async def read(nc: NATS, consumer: str | None = None, skipped: list[int] | None = None) -> list[Letter]:
    """Every dead letter on DEADLETTER (of one consumer), oldest first, each with its retries. An entry on a dead
    letter's or a retry's subject that does not decode as one (anyone may publish on its own subject) is left out,
    its sequence appended to `skipped`."""
    js = nc.jetstream(timeout=10)
    entries: list[tuple[int, str, bytes]] = []
    sub = await js.pull_subscribe("event.>", stream=subjects.STREAM_DEADLETTER, config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0, mem_storage=True))
    try:
        while True:
            try:
                msgs = await sub.fetch(FETCH, timeout=1)
            except TimeoutError:        # nats-py raises its own or asyncio's, depending on where the wait ended
                break
            entries += [(msg.metadata.sequence.stream, msg.subject, msg.data) for msg in msgs]
            if msgs and msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return collect(entries, consumer, skipped)


def collect(entries: Iterable[tuple[int, str, bytes]], consumer: str | None = None,
            skipped: list[int] | None = None) -> list[Letter]:
    """The dead letters among DEADLETTER's entries (sequence, subject, data), each with its retries; what does not
    decode as the subject says is skipped (its sequence appended to `skipped`), never fatal."""
    letters: dict[int, Letter] = {}
    retries: list[tuple[int, EventRetryRequested]] = []
    for seq, subject, data in entries:
        try:
            if subject.startswith(subjects.EVENT_DEAD_LETTERED + "."):
                letter = _letter.decode(data)
                letters[seq] = Letter(seq, letter, forged=subject != subject_of(letter))
            elif subject.startswith(subjects.EVENT_RETRY_REQUESTED + "."):
                retries.append((seq, _retry.decode(data)))
        except msgspec.DecodeError:     # ValidationError too: junk, another type, a JetStream API reply
            if skipped is not None:
                skipped.append(seq)
    for seq, asked in retries:
        if asked.dead_letter in letters:
            letters[asked.dead_letter].retries.append(seq)
    return [one for one in letters.values() if consumer is None or one.letter.consumer == consumer]


def skipped_line(skipped: list[int]) -> str:
    """One line telling of the entries on DEADLETTER that are not dead letters (nor retries)."""
    shown = ", ".join(map(str, skipped[:SHOWN_SKIPPED])) + (", ..." if len(skipped) > SHOWN_SKIPPED else "")
    return (f"{len(skipped)} {'entry' if len(skipped) == 1 else 'entries'} on {subjects.STREAM_DEADLETTER} "
            f"{'is' if len(skipped) == 1 else 'are'} not dead letters (sequence {shown}): skipped")


class Refused(Exception):
    """A dead letter that is not sent back, and why."""


async def send_back(nc: NATS, one: Letter) -> int:
    """Ask for a dead letter to be taken again; return the retry's DEADLETTER sequence. A forged letter, or a
    usage ingest's whose subject is not a usage subject, is refused (Refused), and nothing is published."""
    js = nc.jetstream(timeout=10)
    letter = one.letter
    if one.forged:
        raise Refused(f"it names the consumer {letter.consumer!r} but was written on another's subject")
    if letter.consumer in REPUBLISHED and letter.source != LOG_SOURCE and \
            not letter.subject.startswith(subjects.USAGE_RECORDED + "."):
        raise Refused(f"its subject {letter.subject!r} is not a usage subject")
    if republished(letter):
        headers = {k: v for k, v in letter.headers.items() if not k.startswith("Nats-")}
        headers[subjects.MSG_ID_HEADER] = f"retry:{one.id}:{len(one.retries) + 1}"
        await js.publish(letter.subject, letter.data, headers=headers)
    asked = EventRetryRequested(consumer=letter.consumer, dead_letter=one.id, source=letter.source,
                                subject=letter.subject, sequence=letter.sequence, data=letter.data,
                                headers=letter.headers)
    ack = await js.publish(subject_of(asked), encode(asked),
                           headers={subjects.MSG_ID_HEADER: f"retry-requested:{one.id}:{len(one.retries) + 1}"})
    return ack.seq


def republished(letter: EventDeadLettered) -> bool:
    """Whether a retry publishes the dead letter's message again on its subject (the usage ingest's)."""
    return letter.consumer in REPUBLISHED and letter.source != LOG_SOURCE and bool(letter.subject)


def show(letters: list[Letter], as_json: bool, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    if as_json:
        for one in letters:
            out.write(json.dumps({"id": one.id, "retries": one.retries, "forged": one.forged,
                                  **msgspec.to_builtins(one.letter)}) + "\n")
        return
    if not letters:
        out.write("no dead letters\n")
        return
    out.write(f"{'ID':>6}  {'SET ASIDE':<19}  {'CONSUMER':<20}  {'STAGE':<6}  {'FROM':<16}  RETRIED  ERROR\n")
    for one in letters:
        letter = one.letter
        where = printable(f"{letter.source}:{letter.sequence}", 16)
        retried = ",".join(map(str, one.retries)) or "-"
        error = printable(letter.error)
        if one.forged:
            error = f"FORGED (written on another consumer's subject; never sent back): {error}"
        out.write(f"{one.id:>6}  {_when(letter.occurred_at):<19}  {printable(letter.consumer, 20):<20}  "
                  f"{printable(letter.stage, 20):<6}  {where:<16}  {retried:<7}  {error}\n")


SHOWN_CHARS = 300       # of a text field in the table (--json gives it whole)
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` safe to print on a terminal: control characters (and line separators, bidirectional overrides)
    written as Python escapes (\\x1b, \\n, \\u202e), and cut to `limit` characters with an ellipsis and the full
    length when longer. A field is what a subscriber wrote: it must not move the cursor or forge a line."""
    shown = "".join(repr(ch)[1:-1] if unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI else ch
                    for ch in text)
    if len(shown) <= limit:
        return shown
    if limit < SHOWN_CHARS:             # a column: no room to say more
        return shown[:limit - 1] + "…"
    return f"{shown[:limit]}… ({len(text):,} characters)"


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S")
