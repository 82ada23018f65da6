"""structlog set-up: JSON lines when not on a tty, bound context, no secrets."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import structlog


def configure(service: str, level: str = "info", json: bool | None = None) -> structlog.BoundLogger:
    """Configure logging once per process and return the service's bound logger."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    numeric = logging.getLevelName(level.strip().upper())
    logging.basicConfig(stream=sys.stderr, level=numeric, format="%(message)s")
    renderer = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger().bind(service=service)


class Throttle:
    """A warning that may repeat at a great rate (a dependency away, a flood of bad requests) said at most once every
    `every_s` per kind, with how many were held back since it was last said. At most `kinds` kinds are remembered:
    a flood of new kinds forgets the old ones rather than growing without bound."""

    def __init__(self, every_s: float, kinds: int = 100, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.kinds, self.clock = every_s, kinds, clock
        self._said: dict[str, tuple[float, int]] = {}        # kind -> (when last said, held back since)

    def due(self, kind: str = "") -> int | None:
        """None: said within `every_s`, so held back (and counted); else say it now: how many were held back."""
        now = self.clock()
        said = self._said.get(kind)
        if said is not None and now - said[0] < self.every_s:
            self._said[kind] = (said[0], said[1] + 1)
            return None
        if said is None and len(self._said) >= self.kinds:
            self._said.clear()
        self._said[kind] = (now, 0)
        return said[1] if said is not None else 0
