"""Router's NATS entry points, answered by the leader: reset a breaker, probe now, test an endpoint, read
the breakers, warm a model up."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decoder, encode
from switchyard_gateway.contracts.events import now
from switchyard_gateway.contracts.messages import (
    AnyRouterCommand, ErrorBody, ProbeRef, RefreshProbes, RefreshReply, ResetCircuit, RouterQuery, TestEndpoint,
    WarmModel, WarmReply,
)
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.kit.service import Runtime
from switchyard_gateway.services.router.control import RouterControl
from switchyard_gateway.services.router.policy import RouterPolicy
from switchyard_gateway.services.router.probes import probe
from switchyard_gateway.services.router.settings import Settings
from switchyard_gateway.services.router.warmup import WARMS_AT_ONCE

_command = decoder(AnyRouterCommand)
_query = decoder(RouterQuery)
_warm = decoder(WarmModel)


async def on_command(control: RouterControl, data: bytes) -> bytes:
    """Reset a breaker (the transition is published), probe now, or test one endpoint without publishing."""
    command = _command.decode(data)
    match command:
        case ResetCircuit(endpoint_id=endpoint_id):
            change = control.board.reset(endpoint_id, now())
            await control.publish(change)
            return encode(change)
        case RefreshProbes(endpoint_ids=wanted):
            ids = [e for e in (wanted or control.catalog.endpoints) if e in control.catalog.endpoints]
            probes, event_ids = await control.probe_round(ids)
            probed = [ProbeRef(endpoint_id=p.endpoint_id, event_id=str(p.event_id), ok=p.ok) for p in probes]
            whole = encode(RefreshReply(probes=probes, registry_event_ids=event_ids, probed=probed))
            if len(whole) <= control.nc.max_payload:
                return whole
            return encode(RefreshReply(probes=[], registry_event_ids=event_ids, probed=probed))   # read from ROUTING
        case TestEndpoint():
            result = await probe(control.client, command.endpoint_id, command.kind, command.base_url,
                                 command.api_key_ref, command.timeout_s, control.instance)
            return encode(result)
    raise ServiceError(400, ErrorBody("VALIDATION_ERROR", f"unknown command {type(command).__name__}"))


async def on_query(control: RouterControl, data: bytes) -> bytes:
    """Every breaker, or one endpoint's (404 if neither the registry nor the router knows it)."""
    query = _query.decode(data)
    known = set(control.catalog.endpoints) | set(control.board.breakers)
    if query.endpoint_id is None:
        return encode(control.board.views(known))
    if query.endpoint_id not in known:
        raise ServiceError(404, ErrorBody("ENDPOINT_NOT_FOUND", f"Endpoint '{query.endpoint_id}' not found",
                                          "endpoint_id"))
    return encode(control.board.views([query.endpoint_id])[0])


async def on_warm(control: RouterControl, data: bytes) -> bytes:
    """Warm a model up (unbilled minimal calls), each result recorded by the registry."""
    return encode(WarmReply(results=await control.warmer.answer(_warm.decode(data))))


# Served only while this replica holds the lease (queue group "router"), one request at a time but warm-ups: those
# WARMS_AT_ONCE at a time (one more is refused 503 BUSY), a slow endpoint's holding up none of another's.
SUBSCRIPTIONS = {subjects.ROUTER_COMMAND: on_command, subjects.ROUTER_QUERY: on_query, subjects.ROUTER_WARM: on_warm}
AT_ONCE = {subjects.ROUTER_WARM: WARMS_AT_ONCE}


@dataclass(frozen=True)
class Deps:
    """What the router runs, built once by `start`: its control loop (the handlers above receive it)."""

    control: RouterControl


def instance_name(settings: Settings) -> str:
    return settings.instance or f"router-{socket.gethostname()}-{os.getpid()}"


async def start(runtime: Runtime[Settings]) -> Deps:
    settings = runtime.settings
    control = RouterControl(
        runtime.nc, RouterPolicy.from_settings(settings), instance_name(settings), leader_subscriptions=SUBSCRIPTIONS,
        leader_at_once=AT_ONCE, request_timeout_s=settings.request_timeout_s, replicas=settings.stream_replicas)
    await control.start(settings.connect_timeout_s, spawn=runtime.spawn)
    return Deps(control=control)


async def stop(deps: Deps) -> None:
    await deps.control.stop()
