"""The control plane under /_sim/: read and change the knobs, read and reset the stats.

These routes answer at once and ignore every failure knob; with `refuse` the main listener
is closed, so serve them on a separate control port (or use `Simulator.configure`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from switchyard_gateway.simulator.config import ConfigError
from switchyard_gateway.simulator.replies import Reply, json_reply, ollama_error
from switchyard_gateway.simulator.wire import Request

if TYPE_CHECKING:
    from switchyard_gateway.simulator.server import Simulator

PREFIX = "/_sim/"

_changes = msgspec.json.Decoder(dict[str, Any])


def get_config(sim: Simulator, req: Request) -> Reply:
    """GET /_sim/config: the full config."""
    return json_reply(sim.config)


def post_config(sim: Simulator, req: Request) -> Reply:
    """POST /_sim/config: apply a partial config; reply with the full new one.

    The change takes effect right after this reply is written, so a `refuse` sent on the
    main port still gets its answer before the connection closes.
    """
    try:
        changes = _changes.decode(req.body or b"{}")
        new = sim.config.with_changes(changes)
    except (msgspec.DecodeError, ConfigError) as exc:
        return ollama_error(400, str(exc))
    sim.configure_soon(new)
    return json_reply(new)


def get_stats(sim: Simulator, req: Request) -> Reply:
    """GET /_sim/stats: requests by path, failures by kind, open connections."""
    return json_reply(sim.stats)


def post_reset(sim: Simulator, req: Request) -> Reply:
    """POST /_sim/reset: zero the stats and the call counter that failures are drawn from."""
    sim.reset()
    return json_reply(sim.stats)


ROUTES = {
    ("GET", "/_sim/config"): get_config,
    ("POST", "/_sim/config"): post_config,
    ("GET", "/_sim/stats"): get_stats,
    ("POST", "/_sim/reset"): post_reset,
}


def handle(sim: Simulator, req: Request) -> Reply:
    """Answer one control request."""
    route = ROUTES.get((req.method, req.path))
    if route is None:
        known = {path for _, path in ROUTES}
        status = 405 if req.path in known else 404
        return ollama_error(status, f"no control route {req.method} {req.path}")
    return route(sim, req)
