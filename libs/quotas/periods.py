"""Calendar-aligned periods in a time zone, and the Valkey keys of the counters that live in them.

Days start at local midnight, weeks on Monday, months on the 1st, all in the
tenant's time zone. Rate windows are whole UTC minutes. Counter hashes hold one
field per measure: `tok`, `in`, `out`, `cin` (cached input), `req`, `usd` (nano-USD) for the tenant and
the same with `@<model>` for one of its models; rate windows add `#<key id>`.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, timedelta
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PERIODS = ("day", "week", "month")
_CODE = {"day": "d", "week": "w", "month": "m"}
RETAIN_S = 32 * 86400           # a period's counters are kept this long after it ends
RATE_WINDOW_S = 60
NANOS_PER_USD = 1_000_000_000
_NO_SPACE = str.maketrans({"\t": "_", "\n": "_", " ": "_"})     # holds are tab/newline-separated text


@functools.lru_cache(maxsize=256)
def zone(name: str | None) -> ZoneInfo:
    """The ZoneInfo for an IANA name (UTC when None); ValueError for an unknown one."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone '{name}'") from None


def period_bounds(period: str, when: datetime, tz: ZoneInfo) -> tuple[str, datetime, datetime]:
    """(label, start, end) of the calendar period holding `when`, in `tz`; start and end are aware."""
    local = when.astimezone(tz)
    day = local.date()
    if period == "day":
        first, after = day, day + timedelta(days=1)
    elif period == "week":
        first = day - timedelta(days=day.weekday())
        after = first + timedelta(days=7)
    elif period == "month":
        first = day.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown period '{period}'")
    label = first.isoformat() if period != "month" else first.isoformat()[:7]
    return label, _midnight(first, tz), _midnight(after, tz)


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def iso_utc(moment: datetime) -> str:
    """ISO-8601 in UTC with a Z, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Keys:
    """Valkey key names under one prefix (tests give each run its own)."""

    def __init__(self, prefix: str = "sy:q:") -> None:
        self.prefix = prefix
        self.holds = f"{prefix}holds"             # zset: hold name -> deadline (ms)
        self.hold_data = f"{prefix}holddata"      # hash: hold name -> its held entries
        self.checkpoint = f"{prefix}checkpoint"   # the log position the counters reflect
        self.rebuilding = f"{prefix}rebuilding"   # set while `switchyard replay quota` runs
        self.leader = f"{prefix}leader"           # the quota replica that runs the projection
        self.counters_pattern = f"{prefix}c:*"
        self._periods: dict[tuple[str, str, str], tuple[float, float, tuple[str, datetime, int]]] = {}

    def counter(self, tenant_id: str, period: str, label: str) -> str:
        return f"{self.prefix}c:{tenant_id}:{_CODE[period]}:{label}"

    def period_counter(self, tenant_id: str, period: str, when: datetime, tz: ZoneInfo) -> tuple[str, datetime, int]:
        """(key, period end, expire-at unix seconds) of a tenant's counter hash for a period.

        Remembered until the period ends: the hot path pays for calendar arithmetic once a period.
        """
        at = when.timestamp()
        cached = self._periods.get((tenant_id, period, tz.key))
        if cached is not None and cached[0] <= at < cached[1]:
            return cached[2]
        label, start, end = period_bounds(period, when, tz)
        found = self.counter(tenant_id, period, label), end, int(end.timestamp()) + RETAIN_S
        if len(self._periods) > 50_000:
            self._periods.clear()
        self._periods[(tenant_id, period, tz.key)] = (start.timestamp(), end.timestamp(), found)
        return found

    def counter_prefixes(self) -> tuple[str, str]:
        """The start of every tenant's counter keys: period counters' and rate windows'."""
        return f"{self.prefix}c:", f"{self.prefix}r:"

    def tenant_prefixes(self, tenant_id: str) -> tuple[str, str]:
        """The start of every key of a tenant's counters: its period counters' and its rate windows'."""
        return f"{self.prefix}c:{tenant_id}:", f"{self.prefix}r:{tenant_id}:"

    def rate(self, tenant_id: str, now_s: float) -> tuple[str, int]:
        """(key, window end unix seconds) of a tenant's rate window holding `now_s`."""
        start = int(now_s) // RATE_WINDOW_S * RATE_WINDOW_S
        return f"{self.prefix}r:{tenant_id}:{start}", start + RATE_WINDOW_S


def key_prefix(configured: str, database_url: str, kind: str = "q") -> str:
    """The configured prefix, else `sy:<kind>:<database name>:` (`q` quota counters, `c` cached answers):
    the counters are a projection of one log, so systems that share a Valkey but not a database keep apart."""
    if configured:
        return configured
    return f"sy:{kind}:{urlsplit(database_url).path.strip('/') or 'switchyard'}:"


def field(measure: str, model_id: str | None = None, key_id: str | None = None) -> str:
    """A counter field: `tok`, `tok@llama3.2`, `req#sy_1a2b`, `req#sy_1a2b@llama3.2`; the model id is
    escaped (`model_token`), so any id a server advertises makes one field that reads back as itself."""
    name = measure
    if key_id:
        name += f"#{key_id.translate(_NO_SPACE)}"
    if model_id:
        name += f"@{model_token(model_id)}"
    return name


_FIELD_ESCAPES = str.maketrans({"%": "%25", "@": "%40", "#": "%23", " ": "%20",
                                **{chr(c): f"%{c:02X}" for c in range(0x20)}})


def model_token(model_id: str) -> str:
    """A model id as it sits in a counter field: '%', '@', '#', space and control characters percent-escaped."""
    return model_id.translate(_FIELD_ESCAPES)


def model_of(field_name: str) -> str | None:
    """The model a tenant-wide counter field is about (`tok@llama3.2` -> `llama3.2`); None for the tenant's own
    fields and for per-key ones."""
    measure, at, token = field_name.partition("@")
    if not at or "#" in measure:
        return None
    return unquote(token)


def usd_nanos(input_tokens: int, output_tokens: int, input_price_per_1m: float, output_price_per_1m: float,
              cached_tokens: int = 0, cached_price_per_1m: float | None = None) -> int:
    """The cost of a call in nano-USD (prices are USD per million tokens, i.e. micro-USD per token); the
    `cached_tokens` among the input tokens cost `cached_price_per_1m` when one is set."""
    cached = min(max(cached_tokens, 0), input_tokens) if cached_price_per_1m is not None else 0
    micro_usd = (input_tokens - cached) * input_price_per_1m + output_tokens * output_price_per_1m
    if cached:
        micro_usd += cached * cached_price_per_1m  # type: ignore[operator]
    return round(micro_usd * 1000)
