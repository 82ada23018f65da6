"""What NATS refuses a client once it runs, known at once: its user, or a subject.

nats-py reconnects for ever when every server refuses the user (its password changed, or the user removed, while it
ran); closes the client for good, asking no other server, when the one it is connected to drops it for its
credentials (users reloaded); and hands a permissions violation to the error callback alone, while the request it
refused waits out its timeout. `Client` reconnects from such a drop as from any other; `Refusals`, told the client's
errors, says when every server refused the user, and answers at once the requests waiting on a subject NATS refused
(or on the inbox their answers would come to).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import SplitResult, urlsplit

import nats.errors
from nats.aio.client import Client as NATS

AUTHORIZATION_REFUSED = "authorization violation"
PUBLISH_REFUSED = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)
SUBSCRIBE_REFUSED = re.compile(r'permissions violation for subscription to "([^"]+)"', re.IGNORECASE)
ROUNDS = 2          # refusals per server of the list that count as every server's, should one never answer (down)

Refused = tuple[str, str]       # what NATS refused ("publish" or "subscribe"), and the subject


class Dropped(nats.errors.Error):
    """The server closed the connection for the client's credentials: its users changed while the client ran."""

    def __str__(self) -> str:
        return "nats: the server dropped the connection: Authorization Violation"


class Client(NATS):
    """nats-py's client, save that a server dropping the connection for its credentials is a disconnection like
    any other: the client reconnects, to whichever server of the list still takes them, instead of closing."""

    async def _process_err(self, err_msg: str) -> None:
        if AUTHORIZATION_REFUSED in err_msg.lower() and self.is_connected and self.options["allow_reconnect"]:
            await self._error_cb(Dropped())
            await self._process_op_err(Dropped())
            return
        await super()._process_err(err_msg)


class Refusals:
    """One client's refusals: the servers that refused its user since it last connected (`user_refused` once every
    server of its list did), and the requests waiting on a subject, each answered as soon as NATS refuses it."""

    def __init__(self, servers: list[str], inbox_prefix: str) -> None:
        self.servers = {_address(urlsplit(server)) for server in servers}
        self.inbox = inbox_prefix
        self.refused_by: set[str] = set()
        self.times = 0                                  # refusals of the user since it last connected
        self.user_refused = asyncio.Event()
        self.inbox_refused = False                      # its replies' subscription, until it connects again
        self._waiting: dict[str, set[asyncio.Future[Refused]]] = {}

    def connected(self) -> None:
        """Connected again: the refusals start over (and its replies' subscription is made again)."""
        self.refused_by.clear()
        self.times = 0
        self.inbox_refused = False

    def heard(self, nc: NATS, error: BaseException) -> None:
        text = str(error).lower()
        if AUTHORIZATION_REFUSED in text and not isinstance(error, Dropped):
            self.times += 1
            server: Any = getattr(nc, "_current_server", None)     # the one that refused (nats-py's own record)
            if server is not None:
                self.refused_by.add(_address(server.uri))
            if self.servers <= self.refused_by or self.times >= ROUNDS * len(self.servers):
                self.user_refused.set()
        elif published := PUBLISH_REFUSED.search(text):
            self._answer(published.group(1), ("publish", published.group(1)))
        elif (subscribed := SUBSCRIBE_REFUSED.search(text)) and subscribed.group(1).startswith(f"{self.inbox}.".lower()):
            self.inbox_refused = True                   # no answer reaches the client: every request waits in vain
            for subject in list(self._waiting):
                self._answer(subject, ("subscribe", f"{self.inbox}.>"))

    def waiting_on(self, subject: str) -> asyncio.Future[Refused]:
        """What NATS refuses of a request on `subject` from now on, once it does (`forget` it when the request ends)."""
        refused: asyncio.Future[Refused] = asyncio.get_running_loop().create_future()
        if self.inbox_refused:
            refused.set_result(("subscribe", f"{self.inbox}.>"))
        else:
            self._waiting.setdefault(subject.lower(), set()).add(refused)    # NATS names it in lower case
        return refused

    def forget(self, subject: str, refused: asyncio.Future[Refused]) -> None:
        waiting = self._waiting.get(subject.lower())
        if waiting is not None:
            waiting.discard(refused)
            if not waiting:
                del self._waiting[subject.lower()]

    def _answer(self, subject: str, refused: Refused) -> None:
        for future in self._waiting.pop(subject.lower(), ()):
            if not future.done():
                future.set_result(refused)


def _address(url: SplitResult) -> str:
    return f"{url.hostname}:{url.port or 4222}"
