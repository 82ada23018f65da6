"""Metering's request/reply messages: usage queries (`metering.query.v1`), the time-series rollup
(`metering.command.v1`) and pages of the event log (`metering.replay.v1`), with the replies each one gets.

Every query takes `tenant_id`: None for an operator (every tenant's figures), else one tenant's own. A replay
is scoped by its subject instead, so that NATS permissions can hold a caller to its tenant:
`metering.replay.v1` pages every tenant's events, `metering.replay.v1.<tenant>` that tenant's only.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from switchyard_gateway.contracts.deadletters import EventDeadLettered
from switchyard_gateway.contracts.events import Instant

MeteringQueryKind = Literal["token_counts", "usage", "stats"]

# What metering takes of a subscriber's request, declared on the fields below: decoding enforces it (a 400 naming the
# field) and the published schemas say it.
MAX_EVENTS = 10_000                # events in one page
MAX_TYPES = 64                     # type prefixes in one request (the log has about 50 types), each at most
MAX_TYPE_CHARS = 64                # this long: a page's own fields stay a few KiB whatever is asked
# a type prefix of whole tokens: "usage", "tenant.created", "usage.recorded.v2" (`(?!\n)`: Python's `$`, which
# msgspec checks with, also matches before a final line break; JSON Schema's does not)
TYPE_PREFIX = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+){0,2}(?!\n)$"
MAX_SUBJECT_CHARS = 256            # of a subject the asker names: metering puts it in its own protocol lines, and
                                   # nats-server closes a connection whose line is over 4 KiB
MAX_FILTERS = 64                   # filter subjects of one follow
MAX_SEQUENCE = 2**63 - 1           # a stream sequence or a log position fits a signed 64-bit integer

Subject = Annotated[str, Meta(max_length=MAX_SUBJECT_CHARS)]


class MeteringQuery(msgspec.Struct, frozen=True, omit_defaults=True):
    """A question on `metering.query.v1`: token counts (the default), token usage, or stats (of one model, or of
    every model together)."""

    query: MeteringQueryKind = "token_counts"
    tenant_id: str | None = None
    model: str | None = None          # stats: the model (its registry id); none: every model's together
    since: float | None = None        # stats: time series points from this instant (epoch seconds)


class TokenCount(msgspec.Struct, frozen=True):
    """Tokens and calls of one endpoint x model (`endpoint` is "" in one tenant's figures)."""

    endpoint: str
    model: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    calls: int
    cached_tokens: int = 0          # of input_tokens, served from the upstream's prompt cache


class TokenCountsReply(msgspec.Struct, frozen=True):
    """`token_counts`: the total and its breakdown per endpoint and model."""

    total_tokens: int
    breakdown: list[TokenCount]


class TokenUsageReply(msgspec.Struct, frozen=True):
    """`usage`: total tokens per endpoint, then per model (`{endpoint: {model: tokens}}`)."""

    token_usage_counts: dict[str, dict[str, int]]


class SeriesPoint(msgspec.Struct, frozen=True):
    """Tokens of one endpoint in one UTC minute, or one UTC day before the rollup point."""

    endpoint: str
    timestamp: int                    # the minute's or the day's start, epoch seconds
    granularity: Literal["minute", "day"]
    input_tokens: int
    output_tokens: int
    total_tokens: int


class ModelStats(msgspec.Struct, frozen=True, kw_only=True):
    """`stats`: one model's totals (every model's together: `model` ""), its time series (oldest first) and its
    tokens per endpoint."""

    model: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_tokens: int = 0            # of input_tokens, served from the upstream's prompt cache
    calls: int
    errors: int
    estimated_calls: int
    cost_usd: float
    time_series: list[SeriesPoint]
    endpoint_distribution: dict[str, int]
    truncated: bool = False           # the series was cut to its latest points


class RollupDays(msgspec.Struct, frozen=True):
    """Show the time series by day before `days` days ago; `trim_old` also deletes those minutes."""

    days: int
    trim_old: bool = False


class RollupReply(msgspec.Struct, frozen=True):
    """What a rollup changed; running the same rollup again changes nothing."""

    days: int
    trim_old: bool
    changed: bool
    rolled_up_before: str             # ISO 8601, a UTC midnight
    trimmed_before: str | None
    day_rows: int
    minute_rows_trimmed: int


class ReplayRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """A page of the event log on `metering.replay.v1` (every tenant's events) or `metering.replay.v1.<tenant>`
    (that tenant's only): the events after a log position, or from a time (one of the two), of some types, oldest
    first.

    Ask again with `after` = the page's `last` until a page says `live`: the log is read up to its head, and the
    `LOG` stream holds everything after it from `live.sequence` on."""

    after: Annotated[int, Meta(ge=0, le=MAX_SEQUENCE, description=(
        "a log position: the events after it (neither it nor `since`: 0, the log's start)"))] | UnsetType = UNSET
    since: Instant | None = None      # or instead of `after` (not with it): from the first event that occurred then or later
    types: Annotated[list[Annotated[str, Meta(max_length=MAX_TYPE_CHARS, pattern=TYPE_PREFIX)]], Meta(
        max_length=MAX_TYPES, description="type prefixes of whole tokens (usage, tenant.created); none: all")] = \
        msgspec.field(default_factory=list)
    max_events: Annotated[int, Meta(ge=1, le=MAX_EVENTS)] = 1000    # at most this many events in the page
    max_bytes: Annotated[int, Meta(ge=0)] = 0     # at most this many bytes of events (0: what one NATS message may carry)
    deliver_to: Subject | None = None  # publish the page there (a subject under `_INBOX` or `replay.`) instead of replying


class LiveFrom(msgspec.Struct, frozen=True):
    """Where the events after a page go on live: the stream, the first sequence to read, the subjects to filter."""

    stream: str                       # LOG
    sequence: int                     # deliver from this stream sequence; skip events at or below the page's `last`
    subjects: list[str]               # filter subjects that hold what the request asked for (log.<type>.<tenant>)


class ReplayPage(msgspec.Struct, frozen=True):
    """A page of the log: events as stored, with their positions; where to ask next; where to go live."""

    events: list[msgspec.Raw]         # each event as the log holds it (JSON; older versions as written), oldest first;
                                      # a row no page can carry: an `event.withheld.v1` marker (EventWithheld)
    positions: list[int]              # each event's log position
    last: int                         # the log was read through this position: the next request's `after`
    head: int                         # the log's newest position when it was read
    live: LiveFrom | None = None      # the page reached the head: follow `live.stream` from here instead of asking again


class Follow(msgspec.Struct, frozen=True, omit_defaults=True):
    """Follow a stream live, asked through the subscriber's door (op `follow`): metering makes an ephemeral push
    consumer (no acks, in memory, gone 30 s after its inbox goes quiet) that delivers to `deliver_to`, within what
    the door's subject allows: LOG filtered to its tenant's subjects, or DEADLETTER's retries of its own name."""

    stream: str                       # LOG, or DEADLETTER (only `event.retry_requested.v1.<name>`)
    sequence: Annotated[int, Meta(ge=1, le=MAX_SEQUENCE)]           # the first stream sequence to deliver
    # filter subjects (LOG: log.<type: three tokens, each a token or *>.<tenant or *>, or log.>)
    subjects: Annotated[list[Subject], Meta(min_length=1, max_length=MAX_FILTERS)]
    deliver_to: Subject               # a subject under the asker's own inbox (`_INBOX_<user>.`), no wildcards
    heartbeat_s: Annotated[float, Meta(ge=0.5, le=60)] = 5.0        # how often an idle consumer says it is there


class Following(msgspec.Struct, frozen=True):
    """The consumer metering made for a `Follow`: its name, to stop it with an `Unfollow`."""

    consumer: str


class Unfollow(msgspec.Struct, frozen=True):
    """Stop following (op `unfollow`): delete a consumer a `Follow` of the same user made."""

    stream: str
    consumer: str


class SetAside(msgspec.Struct, frozen=True):
    """Store one of the subscriber's own dead letters on DEADLETTER (op `set_aside`): `letter.consumer` must be the
    door's name; `msg_id` (starting `<name>:`) lets JetStream store a letter sent twice once."""

    letter: EventDeadLettered
    msg_id: Annotated[str, Meta(max_length=512)]


class SetAsideDone(msgspec.Struct, frozen=True):
    """Where DEADLETTER stored the letter."""

    sequence: int
