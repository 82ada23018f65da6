"""A subscriber's door to the log: what it asks metering for, on the subjects its NATS user may publish on.

    door = Door(nc, user="billing", name="tenant-spend", tenant=None)
    page = await door.replay(ReplayRequest(after=0))                    # bytes of a ReplayPage
    consumer = await door.follow(Follow(stream="LOG", sequence=12, subjects=["log.>"], deliver_to=inbox))
    await door.unfollow("LOG", consumer)
    sequence = await door.set_aside(letter, msg_id)

Every request goes to `metering.subscriber.v1.<user>.<name>.<tenant, or _all>.<op>` (services/metering/door.py says
what metering checks and why subscribers no longer speak to JetStream's API themselves). A subscriber connected as the
services' own user asks as that user; its answers come to `_INBOX.` as its client names them.
"""

from __future__ import annotations

import msgspec
import structlog
from nats.aio.client import Client as NATS

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.deadletters import EventDeadLettered
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.contracts.metering import Follow, Following, ReplayRequest, SetAside, SetAsideDone, Unfollow
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.natsio import NotPermitted, ServiceError, ServiceUnavailable

log = structlog.get_logger()
_following = msgspec.json.Decoder(Following)
_stored = msgspec.json.Decoder(SetAsideDone)


class LettersFull(ServiceUnavailable):
    """Metering stores no more of this subscriber's dead letters until some are retried or removed."""

    def __init__(self, message: str) -> None:
        ServiceError.__init__(self, 503, ErrorBody("TOO_MANY_DEAD_LETTERS", message))


class Door:
    """One subscriber's requests to metering: pages of the log, consumers made and deleted, dead letters stored."""

    def __init__(self, nc: NATS, *, user: str, name: str, tenant: str | None, timeout_s: float = 30.0) -> None:
        self.nc, self.user, self.name, self.tenant, self.timeout_s = nc, user, name, tenant, timeout_s

    def subject(self, op: str) -> str:
        return subjects.subscriber_subject(self.user, self.name, self.tenant, op)

    async def ask(self, op: str, body: bytes, timeout_s: float | None = None) -> bytes:
        """The answer to one request; metering busy (503) is ServiceUnavailable, as is no answer; NATS refusing the
        user the door's subject, or the inbox its answers come to, is NotPermitted (403), which asking again does not
        mend."""
        try:
            return await natsio.request(self.nc, self.subject(op), body, timeout_s or self.timeout_s)
        except NotPermitted as exc:
            if exc.subject != self.subject(op):          # its inbox: said as it is
                raise
            tenant = f"tenant {self.tenant}" if self.tenant else "every tenant"
            raise NotPermitted(self.subject(op), f"NATS does not let user {self.user} ask through the door "
                               f"{self.subject(op)}: a subscriber's NATS user may use only the door of the name and "
                               f"tenant its users file gives it (asked as name {self.name}, {tenant})") from None
        except ServiceUnavailable:
            raise
        except ServiceError as exc:
            if exc.status == 503:
                raise ServiceUnavailable("metering") from None
            raise

    async def replay(self, request: ReplayRequest) -> bytes:
        return await self.ask("replay", encode(request))

    async def follow(self, ask: Follow) -> str:
        return _following.decode(await self.ask("follow", encode(ask), 10.0)).consumer

    async def unfollow(self, stream: str, consumer: str) -> None:
        await self.ask("unfollow", encode(Unfollow(stream, consumer)), 2.0)

    async def set_aside(self, letter: EventDeadLettered, msg_id: str, timeout_s: float = 5.0) -> int:
        """Where the letter was stored. Metering refusing it because too many of the name's wait (429) is waited
        out like an outage (LettersFull): the subscriber stays at the event until an operator retries or removes
        some, rather than stopping, or going on without it."""
        try:
            return _stored.decode(await self.ask("set_aside", encode(SetAside(letter, msg_id)), timeout_s)).sequence
        except ServiceError as exc:
            if exc.status == 429:
                log.error("subscriber.dead_letters_full", subscriber=self.name, error=exc.body.message)
                raise LettersFull(exc.body.message) from None
            raise
