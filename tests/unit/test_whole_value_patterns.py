"""Every pattern that judges a whole value refuses a trailing newline: Python's `$` matches before a final `\n`, so
`re.match(r"^...$", "evil\n")` accepted tenants, users and subscribers whose names end in a line break (a look-alike
of another, in Valkey keys, metric labels, log lines and a JWT's `sub`), and a LOG filter that NATS would read as
two protocol lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchyard_gateway.catalog import rules
from switchyard_gateway.contracts.metering import Follow
from switchyard_gateway.kit import nats_auth
from switchyard_gateway.services.metering import history
from switchyard_gateway.services.metering.door import Asker, _filters_problem


@pytest.mark.parametrize(("problem", "good"), [
    (rules.identifier_problem, "acme"), (rules.username_problem, "zed"), (rules.credential_problem, "${KEY}"),
])
@pytest.mark.parametrize("tail", ["\n", "\r\n", "\nX"])
def test_registry_names_end_where_they_seem_to(problem, good: str, tail: str) -> None:
    assert problem(good) is None
    assert problem(good + tail) is not None


def test_a_subscriber_file_refuses_names_with_a_line_break(tmp_path: Path) -> None:
    users = tmp_path / "users.yaml"
    users.write_text('subscribers:\n  - {user: "audit\\n", password: "${P}", name: "audit\\n", tenant: "acme\\n"}\n')
    with pytest.raises(nats_auth.UsersError) as refused:
        nats_auth.load(users, {"P": "a-long-enough-password"})
    assert "subscribers[0].user" in str(refused.value) and "subscribers[0].name" in str(refused.value)
    assert "subscribers[0].tenant" in str(refused.value)


def test_a_log_filter_and_an_inbox_are_one_line() -> None:
    admin = Asker(user="audit", name="audit", tenant=None, op="follow")
    ask = Follow(stream="LOG", sequence=1, subjects=["log.usage.recorded.v2.acme\n"], deliver_to="_INBOX_audit.x")
    assert _filters_problem(admin, ask) is not None
    assert _filters_problem(admin, Follow(stream="LOG", sequence=1, subjects=["log.usage.recorded.v2.acme"],
                                          deliver_to="_INBOX_audit.x")) is None
    assert history.DELIVER_TO.match("replay.abc") and not history.DELIVER_TO.match("replay.abc\n")
    assert history.TYPE_PREFIX.match("usage") and not history.TYPE_PREFIX.match("usage\n")
