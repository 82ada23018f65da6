"""Encoders and decoders, built once; upcasts from old event versions on read."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from typing import Union

from switchyard_gateway.contracts import deadletters, events, quota, routing, users
from switchyard_gateway.contracts import subjects as s
from switchyard_gateway.contracts.events import Event
from switchyard_gateway.contracts.messages import AnyCommand

# Every event type of every contract module: the log and the streams may carry any of them.
EVENT_CLASSES: tuple[type[Event], ...] = (*events.EVENT_CLASSES, *routing.EVENT_CLASSES, *quota.EVENT_CLASSES,
                                          *users.EVENT_CLASSES, *deadletters.EVENT_CLASSES)
EVENT_TYPES: dict[str, type[Event]] = {cls.__struct_config__.tag: cls for cls in EVENT_CLASSES}  # type: ignore[misc]
AnyEvent = Union[EVENT_CLASSES]  # type: ignore[valid-type]  # noqa: UP007 — built from a tuple

_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(AnyEvent)
_events_decoder = msgspec.json.Decoder(list[AnyEvent])
_command_decoder = msgspec.json.Decoder(AnyCommand)
_raw_decoder = msgspec.json.Decoder()


USAGE_RECORDED_V1 = "usage.recorded.v1"     # no longer published; stored events of it are read as v2


def _usage_v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """usage.recorded.v2 only adds the outcome `interrupted`: a v1 event reads as it is, under the new type."""
    return {**raw, "type": s.USAGE_RECORDED}


# old type string -> function turning its payload (a dict) into a current one.
# Add an entry when a `.v2` replaces a `.v1`; the log is never rewritten.
UPCASTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {USAGE_RECORDED_V1: _usage_v1_to_v2}
# old type string -> the type its upcast turns it into (readers of the log ask for both)
SUPERSEDED: dict[str, str] = {USAGE_RECORDED_V1: s.USAGE_RECORDED}

encode: Callable[[Any], bytes] = _encoder.encode


def decode_event(data: bytes | str) -> Event:
    """Decode one event, upcasting it first if it is of an older version."""
    try:
        return _event_decoder.decode(data)
    except msgspec.ValidationError:
        raw = _raw_decoder.decode(data)
        upcast = UPCASTS.get(raw.get("type", "")) if isinstance(raw, dict) else None
        if upcast is None:
            raise
        return msgspec.convert(upcast(raw), AnyEvent)


def decode_events(data: bytes) -> list[Event]:
    """Decode a message body: one event, or a batch (a JSON array) of events of one type."""
    if data[:1] != b"[":
        return [decode_event(data)]
    try:
        return _events_decoder.decode(data)
    except msgspec.ValidationError:
        return [decode_event(item) for item in msgspec.json.decode(data, type=list[msgspec.Raw])]


def encode_batch(events: list[Event]) -> bytes:
    """A batch of events as one message body (a JSON array)."""
    return _encoder.encode(events)


def decode_command(data: bytes | str) -> Any:
    """Decode one registry command."""
    return _command_decoder.decode(data)


def decoder(kind: type) -> msgspec.json.Decoder:
    """A decoder for one message type (build it once, at import)."""
    return msgspec.json.Decoder(kind)


def stored_types(types: Iterable[str]) -> list[str]:
    """The type strings events of `types` may be stored under in the log: each, and every older version of it."""
    wanted = set(types)
    return sorted(wanted | {old for old, new in SUPERSEDED.items() if new in wanted})


def known_event_types() -> list[str]:
    """Every event type string this build understands."""
    return sorted(EVENT_TYPES)


def understands(type_: str) -> bool:
    """Whether this build has a class, or an upcast, for events stored under `type_`."""
    return type_ in EVENT_TYPES or type_ in UPCASTS
