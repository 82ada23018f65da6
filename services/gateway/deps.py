"""The gateway's Deps: everything its routes and its hot path use, built once at start (`app.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client as NATS

from switchyard_gateway import http1
from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.services.gateway.api.usage_stream import UsageHub
from switchyard_gateway.services.gateway.edge.auth import Authenticator
from switchyard_gateway.services.gateway.edge.login_guard import LoginGuard
from switchyard_gateway.services.gateway.edge.rotations import Rotations
from switchyard_gateway.services.gateway.edge.tokens import Tokens
from switchyard_gateway.services.gateway.pipeline.cache import ResponseCache
from switchyard_gateway.services.gateway.pipeline.proxy import Proxy
from switchyard_gateway.services.gateway.pipeline.reserve import QuotaClient
from switchyard_gateway.services.gateway.pipeline.routing import Router
from switchyard_gateway.services.gateway.pipeline.usage import UsagePublisher
from switchyard_gateway.services.gateway.settings import Settings
from switchyard_gateway.services.gateway.state.catalog import LocalState
from switchyard_gateway.services.gateway.state.circuits import Circuits


@dataclass(frozen=True)
class Deps:
    """One gateway's parts; admin and monitoring routes receive it as their `deps` parameter."""

    settings: Settings
    nc: NATS
    auth: Authenticator            # who a request's key stands for
    tokens: Tokens                 # sign-in's access and refresh tokens
    login_guard: LoginGuard        # failed sign-ins per username and address, in Valkey
    rotations: Rotations           # when each refresh token was first used, in Valkey
    state: LocalState              # the registry catalog, fed by REGISTRY
    circuits: Circuits             # breakers and probes, fed by ROUTING
    router: Router                 # route plans and in-flight counts
    quota: QuotaClient             # limits, fed by LIMITS, and reservations in Valkey
    usage: UsagePublisher          # usage events to JetStream, journaled until it has them
    usage_stream: UsageHub         # live usage for /api/usage-stream
    proxy: Proxy                   # the hot path (served over RSGI by edge/rsgi.py)
    cache: ResponseCache           # answers kept in Valkey (mode "off": never consulted)
    upstreams: http1.Pool          # keep-alive connections to the endpoints

    @property
    def catalog(self) -> Catalog:
        return self.state.catalog
