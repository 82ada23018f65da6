"""Some event types of the log folded into memory (`LogFold`), each event once and in log order; what it cannot take
is set aside on DEADLETTER and taken again, live, when a retry asks (`retake`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import asyncpg
import structlog

from switchyard_gateway.contracts.codec import decode_event, encode
from switchyard_gateway.contracts.deadletters import LOG_SOURCE
from switchyard_gateway.contracts.events import Event, subject_of
from switchyard_gateway.events.deadletter import DEAD_LETTERS, DeadLetters, describe
from switchyard_gateway.events.marks import Watermark
from switchyard_gateway.kit import eventlog

log = structlog.get_logger()


class LogFold:
    """Some event types of the log folded into memory by `apply(event)`: each event once, in log order,
    whether it comes from `catch_up` or from the owner's own append (`fold`); an event at or below the
    position (a concurrent catch-up handed it over already) is skipped. One that does not decode or that
    `apply` refuses is set aside (on DEADLETTER as `name` when given `letters`, else logged and counted) and
    noted in `aside` until `retake` takes it again (a retry: see `Outbox.follow_retries`).

    `retake` reads the event from the log (not from the retry: the fold is the log's, and this build may read
    the stored event better than the one that set it aside) and applies it, then every later event it holds
    again in log order: its folds set or drop what an event names, so the result is what log order gives (a
    model registered and then removed stays removed). A fold in memory starts from nothing and reads the whole
    log again, so a new process owes nothing to retries asked of an earlier one.

    `applying` is the log position of the event being handed to `apply`, for folds that keep positions.
    """

    def __init__(self, types: Iterable[str], apply: Callable[[Event], object], *, name: str = "log-fold",
                 letters: DeadLetters | None = None) -> None:
        self.types, self.apply = frozenset(types), apply
        self.name, self.letters = name, letters
        self.position = Watermark()
        self.applying = 0                    # the position of the event `apply` is given (see above)
        self.aside: set[int] = set()         # positions set aside and not taken again since
        self.retried = Watermark()           # the DEADLETTER sequence of the last retry taken
        self._setting_aside: set[asyncio.Task[None]] = set()

    async def catch_up(self, conn: asyncpg.Connection, chunk: int = 10_000) -> int:
        """Fold what the log holds past this fold's position; return the position."""
        upto = await eventlog.head(conn)
        while True:
            rows = await eventlog.read_rows(conn, self.position.value, self.types, upto, chunk)
            for position, _kind, payload in rows:
                if position > self.position.value:
                    self._take(position, payload)
                    self.position.advance(position)
            if len(rows) < chunk:
                return self.position.value

    def fold(self, position: int, event: Event) -> None:
        if position > self.position.value:
            self._apply(position, event)
            self.position.advance(position)

    async def retake(self, conn: asyncpg.Connection, position: int, key: str = "", chunk: int = 10_000) -> str:
        """Take the event set aside at `position` again, once, and then the events after it again; return what
        happened: `applied`, `set aside again` (its dead letter told apart by `key`) or `not set aside here`
        (taken already, or never refused by this process)."""
        if position not in self.aside:
            return "not set aside here"
        rows: list[asyncpg.Record] = []
        after, upto = position - 1, self.position.value
        while True:                                  # until nothing was folded while the log was read
            more = await eventlog.read_rows(conn, after, self.types, upto, chunk)
            rows += more
            if len(more) == chunk:
                after = more[-1][0]
            elif upto < self.position.value:
                after, upto = upto, self.position.value
            else:
                break
        if position not in self.aside or not rows or rows[0][0] != position:
            return "not set aside here"
        self.aside.discard(position)                  # from here on synchronous: nothing else folds in between
        if not self._take(position, rows[0][2], key):
            return "set aside again"
        for later, _kind, payload in rows[1:]:
            if later not in self.aside:
                self._take(later, payload, key)
        return "applied"

    def _take(self, position: int, payload: str, key: str = "") -> bool:
        """Decode a stored event and apply it; set it aside if either fails."""
        try:
            event = decode_event(payload)
        except Exception as exc:  # noqa: BLE001 — not one this build reads: set aside, go on
            self._set_aside(position, "decode", exc, payload.encode(), "", key)
            return False
        return self._apply(position, event, key)

    def _apply(self, position: int, event: Event, key: str = "") -> bool:
        try:
            self.applying = position
            self.apply(event)
            return True
        except Exception as exc:  # noqa: BLE001 — one event the fold cannot take must not stop it
            self._set_aside(position, "apply", exc, encode(event), subject_of(event), key)
            return False

    def _set_aside(self, position: int, stage: str, exc: BaseException, data: bytes, subject: str, key: str) -> None:
        self.aside.add(position)
        if self.letters is None:
            DEAD_LETTERS.labels(self.name, stage).inc()
            log.error("follow.event_set_aside", fold=self.name, stage=stage, position=position, error=describe(exc))
            return
        put = self.letters.put(stage=stage, error=exc, source=LOG_SOURCE, subject=subject,  # type: ignore[arg-type]
                               sequence=position, data=data, key=key)
        task = asyncio.ensure_future(put)            # folds are synchronous: the dead letter is kept meanwhile
        self._setting_aside.add(task)
        task.add_done_callback(self._set_aside_done)

    def _set_aside_done(self, task: asyncio.Task[None]) -> None:
        self._setting_aside.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("follow.dead_letter_lost", fold=self.name, why=describe(task.exception()))
