"""`switchyard up` on SIGHUP: the `--nats-users` file read again and given to every NATS node, without a restart.

    reload = UsersReload(args.nats_users, os.environ)
    signal.signal(signal.SIGHUP, reload.on_signal)         # at once: a SIGHUP must never stop `up`
    ...
    reload.serving(stack, subscribers)                      # NATS runs: from now on a SIGHUP reloads
    ...
    reload.close()                                          # before the stack stops

The file goes through the checks of start (`nats_auth.load`: no plain-text password, none too short, no name twice,
no file too large...): one with a problem changes nothing and `up` says why in one line; else each node's
`auth.conf` is written again (0600) and the node reads it (SIGHUP to nats-server), and `up` says how many subscribers
it now allows. The services' own user is left as it is. A `${ENV_VAR}` password is read from `up`'s environment,
which cannot change once it runs (its `ENV_VAR_FILE` twin is read again): a password is rotated as a bcrypt hash.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path

from switchyard_gateway.cli.say import say
from switchyard_gateway.kit import nats_auth
from switchyard_gateway.kit.nats_auth import SubscriberUser
from switchyard_gateway.kit.stack import EmbeddedStack, StackError


class UsersReload:
    """What a SIGHUP does to `up`. The handler only writes a byte to a pipe (no lock, nothing to interrupt): a thread
    of its own does the work, one reload at a time (signals that come meanwhile make one more), so the supervisor
    keeps its watch and a SIGTERM during a reload still stops `up`."""

    def __init__(self, path: Path | None, env: Mapping[str, str]) -> None:
        self.path, self.env = path, env
        self.stack: EmbeddedStack | None = None
        self.subscribers: list[SubscriberUser] = []
        self._lock = threading.Lock()
        self._asked_early = False            # a SIGHUP before NATS ran: reloaded once it runs
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        threading.Thread(target=self._wait_for_signals, name="up-sighup", daemon=True).start()

    def on_signal(self, _signum: int, _frame: object) -> None:
        try:
            os.write(self._write, b"h")
        except BlockingIOError:              # the pipe is full: a reload is asked already
            pass

    def serving(self, stack: EmbeddedStack, subscribers: list[SubscriberUser]) -> None:
        """NATS runs with these subscribers: a SIGHUP from now on reloads them (one that came during start, now)."""
        with self._lock:
            self.stack, self.subscribers = stack, list(subscribers)
            asked, self._asked_early = self._asked_early, False
        if asked:
            self.on_signal(0, None)

    def close(self) -> None:
        """No reload from now on (the stack stops); waits for one under way."""
        with self._lock:
            self.stack = None

    def _wait_for_signals(self) -> None:
        while True:
            try:
                os.read(self._read, 512)         # every SIGHUP that came meanwhile: one reload
            except OSError:
                return
            with self._lock:
                try:
                    line = self.reload()
                except Exception as exc:  # noqa: BLE001 — said, and the next SIGHUP tries again
                    line = f"SIGHUP: users not reloaded: {type(exc).__name__}: {' '.join(str(exc).split())}"
            if line:
                say(line)

    def reload(self) -> str | None:
        """Read the file again and give NATS its subscribers; the line `up` says (None: nothing to say)."""
        if self.path is None:
            return "SIGHUP: no --nats-users file to read again; nothing reloaded (SIGINT or SIGTERM stops `up`)"
        if self.stack is None:
            if self._asked_early:
                return None
            self._asked_early = True
            return "SIGHUP: NATS is not running yet; its users are read again once it runs"
        kept = f"NATS keeps the {_subscribers(len(self.subscribers))} it allowed"
        try:
            subscribers = nats_auth.load(self.path, self.env)
        except nats_auth.UsersError as exc:
            return f"SIGHUP: users not reloaded: {' '.join(str(exc).split())}; {kept}"
        try:
            refused = self.stack.reload_nats_users(subscribers)
        except (StackError, OSError) as exc:
            return f"SIGHUP: users not reloaded: {' '.join(str(exc).split())}; {kept}"
        before = {user.user: user for user in self.subscribers}
        after = {user.user: user for user in subscribers}
        self.subscribers = subscribers
        changes = (f"{len(after.keys() - before.keys())} added, {len(before.keys() - after.keys())} removed, "
                   f"{sum(1 for name in after.keys() & before.keys() if after[name] != before[name])} changed")
        said = f"SIGHUP: NATS users reloaded from {self.path}: {_subscribers(len(subscribers))} now allowed ({changes})"
        if refused:
            said += f"; not taken by {'; '.join(' '.join(why.split()) for why in refused)}"
        return said


def _subscribers(count: int) -> str:
    return f"{count} subscriber{'' if count == 1 else 's'}"
