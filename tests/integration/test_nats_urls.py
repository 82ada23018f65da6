"""A NATS URL list connects to whichever of its servers answers, as a cluster's clients do."""

from __future__ import annotations

import structlog.testing
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.stack import StackUrls
from switchyard_gateway.kit.stack_nats import nats_problem
from switchyard_gateway.kit.stack_proc import pick_free_port


async def test_a_url_list_connects_past_a_server_that_is_down(urls: StackUrls) -> None:
    down = f"nats://127.0.0.1:{pick_free_port(set())}"
    nc = await natsio.connect(f"{down},{urls.nats_url}", "tests-url-list", 10)
    try:
        assert nc.is_connected and nc.connected_url is not None
        assert nc.connected_url.port == int(urls.nats_url.rsplit(":", 1)[1])
        assert len(nc.servers) == 2
    finally:
        await nc.close()
    assert nats_problem(f"{down}, {urls.nats_url}") is None


async def test_a_list_of_servers_that_are_all_down_fails_naming_them() -> None:
    ports = [pick_free_port(set()) for _ in range(2)]
    url = ",".join(f"nats://user:pw@127.0.0.1:{port}" for port in ports)
    try:
        await natsio.connect(url, "tests-url-list", 1.5)
    except ConnectionError as exc:
        assert all(str(port) in str(exc) for port in ports) and "pw" not in str(exc)
    else:
        raise AssertionError("connected to servers that are down")


async def test_closing_a_connection_on_purpose_warns_of_nothing(urls: StackUrls) -> None:
    """A command that closes its own connection (`switchyard events dead-letters`) does not print a warning that
    NATS went away; a lost connection still does (the supervisor tests kill NATS)."""
    nc = await natsio.connect(urls.nats_url, "tests-close", 10)
    with structlog.testing.capture_logs() as logs:
        await nc.close()
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == []
