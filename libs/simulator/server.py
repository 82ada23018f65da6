"""The Simulator: plays Ollama, vLLM and OpenAI model servers over real HTTP on loopback.

Measured on 2 cores over loopback (`python -m benchmarks.simulator`, aiohttp client, 32 in flight):
this hand-written asyncio.Protocol on uvloop costs ~40 us of server CPU per chat reply (~24k req/s a
core; 8k req/s served, client-bound); plain asyncio ~70 us; aiohttp.web.Server on uvloop ~100 us.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import msgspec

from switchyard_gateway.simulator import control, ollama_api, openai_api
from switchyard_gateway.simulator.config import SimConfig
from switchyard_gateway.simulator.connection import HttpConnection
from switchyard_gateway.simulator.faults import fails
from switchyard_gateway.simulator.replies import TEXT, Rejected, Reply, StreamReply, error_for, is_openai_path
from switchyard_gateway.simulator.wire import Plan, Request

# path -> (method, handler(body, config, serial)); every upstream route on one screen.
ROUTES = {**openai_api.ROUTES, **ollama_api.ROUTES}

LISTEN_BACKLOG = 1024
STOP_DEADLINE_S = 1.0


class SimStats(msgspec.Struct, frozen=True):
    """What the simulator has served since it started or was last reset."""

    requests: dict[str, int]  # upstream requests by path (control requests not counted)
    total: int
    failures: dict[str, int]  # injected failures by kind
    connections: int  # open connections on the main port
    abandoned: int = 0  # replies whose client closed the connection before they were complete
    busy: int = 0     # open connections answering a request now (one that waits for latency or is paced)


class Simulator:
    """An upstream model server, in-process: start it, point a client at `url`, turn knobs.

    `async with Simulator(config) as sim:` starts it on a free loopback port.

    `configure()` applies knobs at once; with `failure_kind="refuse"` and a rate above 0
    the listener closes (and open connections with it) until the knobs change back.
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self._config = config or SimConfig()
        self._host = "127.0.0.1"
        self._port: int | None = None
        self._control_port: int | None = None
        self._listener: asyncio.Server | None = None
        self._listen_sock: socket.socket | None = None
        self._control: asyncio.Server | None = None
        self._conns: set[HttpConnection] = set()
        self._control_conns: set[HttpConnection] = set()
        self._requests: dict[str, int] = {}
        self._failures: dict[str, int] = {}
        self._abandoned = 0
        self._serial = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False

    # --- lifecycle ---------------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, control_port: int | None = None
    ) -> int:
        """Listen on host:port (0 picks a free port) and return the bound port.

        `control_port` adds a listener that serves only /_sim/ routes and is never refused.
        """
        if self._running:
            raise RuntimeError("simulator already started")
        loop = asyncio.get_running_loop()
        self._host = host
        sock = _listening_socket(host, port)
        self._port = sock.getsockname()[1]
        self._listen_sock = sock
        self._listener = await loop.create_server(self._main_protocol, sock=sock)
        if control_port is not None:
            try:
                csock = _listening_socket(host, control_port)
            except OSError:
                self._close_listener()
                raise
            self._control_port = csock.getsockname()[1]
            self._control = await loop.create_server(self._control_protocol, sock=csock)
        self._running = True
        if self._config.refusing:
            self._close_listener()
        return self._port

    async def stop(self) -> None:
        """Close the listeners and every open connection, hung ones included."""
        self._running = False
        servers = [s for s in (self._listener, self._control) if s is not None]
        self._close_listener()
        if self._control is not None:
            self._control.close()
            self._control = None
        for conn in [*self._conns, *self._control_conns]:
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
        for server in servers:
            await server.wait_closed()
        deadline = time.monotonic() + STOP_DEADLINE_S  # let every connection_lost run
        while (self._conns or self._control_conns) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def __aenter__(self) -> Simulator:
        if not self._running:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _main_protocol(self) -> HttpConnection:
        return HttpConnection(self.handle, self._conns, self._count_abandoned)

    def _count_abandoned(self) -> None:
        self._abandoned += 1

    def _control_protocol(self) -> HttpConnection:
        return HttpConnection(self._handle_control, self._control_conns)

    # --- knobs and stats ---------------------------------------------------------------

    @property
    def config(self) -> SimConfig:
        return self._config

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def url(self) -> str:
        return _url(self._host, self._port)

    @property
    def control_port(self) -> int | None:
        return self._control_port

    @property
    def control_url(self) -> str | None:
        return None if self._control_port is None else _url(self._host, self._control_port)

    @property
    def stats(self) -> SimStats:
        return SimStats(
            requests=dict(self._requests),
            total=sum(self._requests.values()),
            failures=dict(self._failures),
            abandoned=self._abandoned,
            connections=len(self._conns),
            busy=sum(1 for conn in self._conns if conn.busy),
        )

    def configure(self, **changes: object) -> SimConfig:
        """Apply knob changes now; raises ConfigError (a ValueError) on a bad knob."""
        new = self._config.with_changes(changes)
        self._apply(new, self._update_listener)
        return new

    def configure_soon(self, new: SimConfig) -> None:
        """Adopt `new` now, but open or close the listener only after the current callback,
        so the control reply that asked for it is written first."""
        self._apply(new, lambda: asyncio.get_running_loop().call_soon(self._update_listener))

    def _apply(self, new: SimConfig, update_listener: Callable[[], object]) -> None:
        old, self._config = self._config, new
        if self._running and old.refusing != new.refusing:
            update_listener()

    def reset(self) -> None:
        """Zero the stats and the call counter that failures are drawn from."""
        self._requests.clear()
        self._failures.clear()
        self._abandoned = 0
        self._serial = 0

    # --- the listener, closed while refusing -------------------------------------------

    def _update_listener(self) -> None:
        if not self._running:
            return
        if self._config.refusing:
            self._close_listener()
        elif self._listen_sock is None:
            self._open_listener()

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()  # closes its socket too
            self._listener = None
        elif self._listen_sock is not None:
            self._listen_sock.close()  # opened, but its server is not attached yet
        self._listen_sock = None
        for conn in list(self._conns):
            conn.close()

    def _open_listener(self) -> None:
        # The socket listens before this returns, so no client sees a refusal after it.
        sock = _listening_socket(self._host, self._port or 0)
        self._listen_sock = sock
        task = asyncio.get_running_loop().create_task(self._serve_on(sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_on(self, sock: socket.socket) -> None:
        try:
            server = await asyncio.get_running_loop().create_server(self._main_protocol, sock=sock)
        except (OSError, ValueError):
            return  # closed again before it could be served
        if self._listen_sock is sock:
            self._listener = server
        else:
            server.close()

    # --- requests ----------------------------------------------------------------------

    def handle(self, req: Request) -> Reply | StreamReply | Plan:
        """Answer one request on the main port: count it, maybe fail it, route it."""
        path = req.path
        if path.startswith(control.PREFIX):
            return control.handle(self, req)
        cfg = self._config
        self._serial += 1
        self._requests[path] = self._requests.get(path, 0) + 1
        if cfg.api_key is not None and req.header(b"authorization") != b"bearer " + cfg.api_key.lower().encode():
            return error_for(path, 401, "Incorrect API key provided")
        if cfg.failure_rate > 0.0 and cfg.failure_kind != "refuse" \
                and (not cfg.failure_paths or path in cfg.failure_paths):
            if fails(cfg.seed, self._serial, cfg.failure_rate):
                return self._fail(req, cfg)
        reply = self._route(req, cfg)
        if cfg.latency_ms > 0 or ((cfg.token_interval_ms > 0 or cfg.end_delay_ms > 0) and type(reply) is StreamReply):
            return Plan(reply, cfg.latency_ms / 1000, cfg.token_interval_ms / 1000, end_delay_s=cfg.end_delay_ms / 1000)
        return reply

    def _route(self, req: Request, cfg: SimConfig) -> Reply | StreamReply:
        route = ROUTES.get(req.path)
        if route is None:
            if is_openai_path(req.path):
                return error_for(req.path, 404, f"Unknown route {req.method} {req.path}")
            return Reply(404, b"404 page not found", TEXT)
        method, handler = route
        if req.method != method and not (req.method == "HEAD" and method == "GET"):
            return error_for(req.path, 405, f"{req.method} is not allowed on {req.path}")
        try:
            return handler(req.body, cfg, self._serial)
        except Rejected as exc:
            return exc.reply

    def _fail(self, req: Request, cfg: SimConfig) -> Reply | Plan:
        kind = cfg.failure_kind
        self._failures[kind] = self._failures.get(kind, 0) + 1
        delay_s = cfg.latency_ms / 1000
        if kind == "hang":
            return Plan(None, delay_s, 0.0, "hang")
        if kind in ("cut", "cut_end"):
            return Plan(self._route(req, cfg), delay_s, cfg.token_interval_ms / 1000, kind)
        if kind == "http_429":
            retry = ((b"Retry-After", b"%d" % cfg.retry_after_s),)
            reply = error_for(req.path, 429, "simulated rate limit, retry later", retry)
        else:
            reply = error_for(req.path, 500, "simulated upstream failure")
        return Plan(reply, delay_s) if delay_s > 0 else reply

    def _handle_control(self, req: Request) -> Reply:
        if req.path.startswith(control.PREFIX):
            return control.handle(self, req)
        return Reply(404, b"the control port serves only /_sim/ routes", TEXT)


def _listening_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _url(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"
