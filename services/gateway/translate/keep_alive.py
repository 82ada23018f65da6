"""How long a shared Ollama server keeps a model loaded after a call: a caller's `keep_alive` read as Ollama reads it, and held to bounds.

Ollama takes a number of seconds (any negative one: for ever) or a Go duration (`"5m"`,
`"1h30m"`, `"-1m"`, `"0"`), and refuses anything else with a 400. On a server other tenants
share, a caller's `0` would unload their model and `-1` pin it for ever, so a caller's value
goes on held between KEEP_ALIVE_FLOOR_S and KEEP_ALIVE_CEILING_S: 0 and anything shorter
become Ollama's default of five minutes (the model stays as long as it would had the caller
said nothing), for ever and anything longer an hour. The router's warm-up sets its own (the
operator's, `SWITCHYARD_WARM_KEEP_ALIVE`); a call that only unloads is answered by the gateway.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

KEEP_ALIVE_FLOOR_S = 300            # Ollama's default: no caller makes a shared model leave sooner
KEEP_ALIVE_CEILING_S = 3600         # no caller holds a shared server's memory longer after its call

_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h)"
_DURATION = re.compile(rf"[-+]?(?:{_PART})+")
_PARTS = re.compile(r"([0-9]*\.?[0-9]*)(ns|us|µs|μs|ms|s|m|h)")
_LONGEST_S = (2**63 - 1) / 1e9      # a Go duration past this is refused as out of range


def keep_alive_seconds(value: Any) -> float | None:
    """A `keep_alive` as seconds (negative: for ever), read as Ollama reads it; None when absent or null. A value
    Ollama refuses (a bool, an object, `"5x"`, `"-"`, a bare `"300"`) is a ValueError."""
    if value is None:
        return None
    if isinstance(value, msgspec.Raw):          # a float the gateway kept as the client wrote it
        value = float(bytes(value))
    if type(value) in (int, float):
        return float(value)
    if isinstance(value, str):
        return _go_duration_s(value)
    raise ValueError(f"a duration (\"5m\") or a number of seconds, as Ollama reads it, not {type(value).__name__}")


def _go_duration_s(text: str) -> float:
    """Go's `time.ParseDuration`, in seconds: "0", or signed parts each a number and a unit (ns, us, ms, s, m, h)."""
    if text in ("0", "+0", "-0"):
        return 0.0
    if not _DURATION.fullmatch(text):
        raise ValueError(f"{text!r} is no duration (\"5m\", \"1h30m\") as Ollama reads it")
    seconds = sum(float(number) * _UNIT_S[unit] for number, unit in _PARTS.findall(text))
    if seconds > _LONGEST_S:
        raise ValueError(f"{text!r} is longer than any duration Ollama reads")
    return -seconds if text.startswith("-") else seconds


def unloads(seconds: float | None) -> bool:
    """Whether a `keep_alive` asks for the model to be unloaded now (0, or less than the nanosecond Go counts in)."""
    return seconds is not None and 0 <= seconds < 1e-9


def held(value: Any) -> Any:
    """The `keep_alive` to send a shared Ollama server for a caller's: the same value when it is within the bounds
    (the body need not change), else the nearest bound in seconds (for ever: the ceiling). The value has been
    read already (`keep_alive_seconds`), so it reads."""
    seconds = keep_alive_seconds(value)
    if seconds is None or KEEP_ALIVE_FLOOR_S <= seconds <= KEEP_ALIVE_CEILING_S:
        return value
    return KEEP_ALIVE_CEILING_S if seconds < 0 or seconds > KEEP_ALIVE_CEILING_S else KEEP_ALIVE_FLOOR_S
