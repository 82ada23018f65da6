"""When a client's user counts as refused by every server of its list, and which waiting requests a refusal answers."""

from __future__ import annotations

from types import SimpleNamespace
from urllib.parse import urlsplit

import nats.errors

from switchyard_gateway.kit.natsrefusals import Dropped, Refusals

SERVERS = ["nats://billing:pw@127.0.0.1:4222", "nats://billing:pw@127.0.0.1:4223", "nats://billing:pw@127.0.0.1:4224"]
REFUSED = nats.errors.Error("nats: 'Authorization Violation'")


def on(url: str) -> SimpleNamespace:
    """A client as nats-py leaves it when a server refuses it: that server its current one."""
    return SimpleNamespace(_current_server=SimpleNamespace(uri=urlsplit(url)))


def test_the_user_is_refused_once_every_server_of_the_list_refused_it_since_it_last_connected() -> None:
    refusals = Refusals(SERVERS, "_INBOX_billing")
    refusals.heard(on(SERVERS[0]), Dropped())              # the drop itself is no refusal on reconnecting
    refusals.heard(on(SERVERS[0]), REFUSED)
    refusals.heard(on(SERVERS[1]), REFUSED)
    refusals.connected()                                   # a server took it in between: start over
    for server in SERVERS[:2]:
        refusals.heard(on(server), REFUSED)
    assert not refusals.user_refused.is_set()
    refusals.heard(on("nats://127.0.0.1:4225"), REFUSED)   # a server it discovered is none of its list
    assert not refusals.user_refused.is_set()
    refusals.heard(on(SERVERS[2]), REFUSED)
    assert refusals.user_refused.is_set()


def test_a_server_that_never_answers_does_not_keep_the_refusal_of_the_others_waiting_for_ever() -> None:
    refusals = Refusals(SERVERS, "_INBOX_billing")
    for _ in range(2):                                      # the third is down: connection refused, every round
        for server in SERVERS[:2]:
            refusals.heard(on(server), REFUSED)
            assert not refusals.user_refused.is_set()
        refusals.heard(on(SERVERS[2]), OSError("connect call failed"))
    for server in SERVERS[:2]:
        refusals.heard(on(server), REFUSED)
    assert refusals.user_refused.is_set()                   # two rounds' worth of refusals: 6 for 3 servers


async def test_a_refused_subject_answers_the_requests_waiting_on_it_and_a_refused_inbox_every_one() -> None:
    refusals = Refusals(SERVERS, "_INBOX_billing")
    door = refusals.waiting_on("metering.subscriber.v1.billing.Spend._all.replay")
    other = refusals.waiting_on("metering.subscriber.v1.billing.spend._all.follow")
    refusals.heard(on(SERVERS[0]), nats.errors.Error(
        'nats: permissions violation for publish to "metering.subscriber.v1.billing.spend._all.replay"'))
    assert door.result() == ("publish", "metering.subscriber.v1.billing.spend._all.replay") and not other.done()
    refusals.heard(on(SERVERS[0]), nats.errors.Error(
        'nats: permissions violation for subscription to "_inbox_billing2.abc.*"'))     # not its inbox
    assert not other.done()
    refusals.heard(on(SERVERS[0]), nats.errors.Error(
        'nats: permissions violation for subscription to "_inbox_billing.abc.*"'))
    assert other.result() == ("subscribe", "_INBOX_billing.>")
    assert refusals.waiting_on("anything").result() == ("subscribe", "_INBOX_billing.>")    # until it reconnects
    refusals.connected()
    assert not refusals.waiting_on("anything").done()
