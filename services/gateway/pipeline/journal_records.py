"""What the gateway's journal writes, one JSON array per line, and how a journal left on disk is read back.

    ["a", event id, request id, accepted at, tenant, key, model, requested model, api, stream, prompt tokens]
    ["p", event id, at, status, input tokens, output tokens, model, endpoint, provider, upstream model, attempts]
    ["r", event id]                  refused after all (over a quota): no usage event will come
    ["f", {usage event}]             finished: the call's usage event, as it is published
    ["k", [event id, ...]]           JetStream acknowledged these events

Reading a journal back (`Left`) folds its segments in order: a call accepted and neither finished
nor refused was in flight when its gateway died; an event finished and never acknowledged may
never have reached JetStream.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import structlog

from switchyard_gateway.contracts.events import UsageRecorded

log = structlog.get_logger()

SEGMENT_GLOB = "seg-*.jsonl"


class Accepted(msgspec.Struct, array_like=True, tag="a"):
    """A call was accepted (written before its quota is reserved and before any upstream is called)."""

    event_id: uuid.UUID
    request_id: str
    at: float                     # unix seconds
    tenant_id: str
    key_id: str
    model: str
    requested_model: str
    api: str
    stream: bool
    prompt_tokens: int            # four request bytes a token; a Progress may count them properly


class Progress(msgspec.Struct, array_like=True, tag="p"):
    """What a call that has run a while is known to have done so far (written about once a second)."""

    event_id: uuid.UUID
    at: float
    status: int
    input_tokens: int
    output_tokens: int
    model: str
    endpoint_id: str
    provider_id: str
    upstream_model: str
    attempts: int


class Refused(msgspec.Struct, array_like=True, tag="r"):
    event_id: uuid.UUID


class Finished(msgspec.Struct, array_like=True, tag="f"):
    event: msgspec.Raw            # the usage event, encoded once and published as written here


class Acknowledged(msgspec.Struct, array_like=True, tag="k"):
    event_ids: list[uuid.UUID]


Record = Accepted | Progress | Refused | Finished | Acknowledged
encode = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(Record).decode


class _Ident(msgspec.Struct):
    event_id: uuid.UUID


_decode_ident = msgspec.json.Decoder(_Ident).decode


def event_id_of(raw: bytes | msgspec.Raw) -> uuid.UUID:
    """The event id of an encoded event, reading nothing else."""
    return _decode_ident(raw).event_id


def segment_number(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def segments(directory: Path) -> list[Path]:
    """A journal directory's segment files, oldest first."""
    return sorted(directory.glob(SEGMENT_GLOB), key=segment_number)


def records(path: Path) -> Iterator[Record]:
    """The records of one segment; a line that does not decode (torn by a machine crash) is skipped."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield _decode_record(line)
            except msgspec.MsgspecError:
                log.error("journal.bad_line", segment=path.name, line=number)


@dataclass
class Left:
    """What a journal's segments say was left undone: calls in flight, events JetStream may not have."""

    in_flight: dict[uuid.UUID, tuple[Accepted, Progress | None]] = field(default_factory=dict)
    unacknowledged: set[uuid.UUID] = field(default_factory=set)

    @classmethod
    def read(cls, paths: Iterable[Path]) -> Left:
        left = cls()
        for path in paths:
            for record in records(path):
                left.fold(record)
        return left

    def fold(self, record: Record) -> None:
        match record:
            case Accepted():
                self.in_flight[record.event_id] = (record, None)
            case Progress():
                seen = self.in_flight.get(record.event_id)
                if seen is not None:
                    self.in_flight[record.event_id] = (seen[0], record)
            case Refused():
                self.in_flight.pop(record.event_id, None)
            case Finished():
                event_id = event_id_of(record.event)
                self.in_flight.pop(event_id, None)
                self.unacknowledged.add(event_id)
            case Acknowledged():
                self.unacknowledged.difference_update(record.event_ids)

    def interrupted(self) -> list[UsageRecorded]:
        """One usage event per call in flight, under the event id it was accepted with."""
        return [interrupted_event(accepted, progress) for accepted, progress in self.in_flight.values()]


def interrupted_event(accepted: Accepted, progress: Progress | None) -> UsageRecorded:
    """The usage event of a call its gateway died serving: what the journal knew of it, counted by the gateway."""
    last = progress.at if progress is not None else accepted.at
    known = progress or Progress(accepted.event_id, accepted.at, 0, accepted.prompt_tokens, 0, accepted.model,
                                 "", "", "", 0)
    return UsageRecorded(
        event_id=accepted.event_id, occurred_at=datetime.fromtimestamp(last, UTC),
        request_id=accepted.request_id, tenant_id=accepted.tenant_id, key_id=accepted.key_id,
        model=known.model or accepted.model, requested_model=accepted.requested_model, api=accepted.api,
        outcome="interrupted", status=known.status, input_tokens=known.input_tokens,
        output_tokens=known.output_tokens, estimated=True, stream=accepted.stream, endpoint_id=known.endpoint_id,
        provider_id=known.provider_id, upstream_model=known.upstream_model, attempts=known.attempts,
        duration_ms=max(0.0, last - accepted.at) * 1000,
    )
