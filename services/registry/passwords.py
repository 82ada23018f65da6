"""Password hashes: Argon2id (argon2-cffi), computed off the event loop, a few at a time.

Argon2id is memory-hard on purpose (64 MiB and three passes per hash with the library's
defaults, RFC 9106's second recommended profile), so each hash or check runs in a worker
thread and at most `concurrency` run at once: a burst of sign-ins queues here instead of
exhausting the registry's memory. A sign-in check waits at most `wait_s` for its turn and
finds at most `queue` others waiting, else it is refused at once (`Busy`): a flood of
sign-ins answered later than the asker waits for would only burn the registry's time.
An unknown user is checked against a hash made at start, so a wrong username costs as
long as a wrong password and the answer's timing does not say which usernames exist.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class Busy(Exception):
    """Too many sign-in checks wait already, or this one waited too long for its turn."""


class Passwords:
    """Hash and check passwords for the registry (it alone holds the hashes that matter)."""

    def __init__(self, concurrency: int = 2, hasher: PasswordHasher | None = None, queue: int = 32,
                 wait_s: float = 3.0) -> None:
        self.hasher = hasher or PasswordHasher()
        self.queue, self.wait_s = queue, wait_s
        self.waiting = 0
        self._gate = asyncio.Semaphore(max(1, concurrency))
        self._decoy = self.hasher.hash("a password nobody has")     # for usernames that do not exist

    async def hash(self, password: str) -> str:
        """The Argon2id hash of a password, in PHC string form (salt and parameters inside)."""
        async with self._gate:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def check(self, stored: str | None, password: str) -> bool:
        """Whether `password` matches the stored hash; None (no such user) never matches, at the same cost. Busy
        when `queue` checks wait already or this one cannot start within `wait_s`."""
        if self.waiting >= self.queue:
            raise Busy(f"{self.waiting} sign-in checks are waiting")
        self.waiting += 1
        try:
            async with asyncio.timeout(self.wait_s):
                await self._gate.acquire()
        except TimeoutError:
            raise Busy(f"no sign-in check could start within {self.wait_s:g} s") from None
        finally:
            self.waiting -= 1
        try:
            return await asyncio.to_thread(self._check, stored, password)
        finally:
            self._gate.release()

    def _check(self, stored: str | None, password: str) -> bool:
        try:
            self.hasher.verify(stored or self._decoy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return stored is not None
