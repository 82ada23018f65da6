"""Serve a service's app factory from a lean main process: its port checked, its workers numbered.

granian serves the Litestar services; the gateway, an RSGI app, is served by our own server
(`http1.server`) in the same shape unless SWITCHYARD_HTTP_SERVER says granian (with one worker, our
server needs no main: the service is that one process). The main process
only supervises (importing the server and nothing of the service), so
it holds tens of megabytes, not the app's hundred; each worker imports and builds the app. A
service may run several workers on one listening socket (the kernel spreads connections among
them). Each worker is an instance of its own — its own NATS connection, journal and
event-fed state — named `<instance>-w<n>`: n is the lowest worker slot free in `slots_dir`,
held by an flock on `<instance>-w<n>.lock` for the worker's life, so a worker that replaces
a dead one takes its slot, and with it its journal.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib
import math
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import msgspec

from switchyard_gateway.kit import ports
from switchyard_gateway.kit.settings import ENV_PREFIX, ServiceSettings, SettingsError
from switchyard_gateway.kit.stack_proc import die_with_parent, port_is_free

S = TypeVar("S", bound=ServiceSettings)
SLOT_WAIT_S = 30.0          # a worker whose every slot is held (its predecessor still stopping) waits this long
WORKER_SETTLED_S = 10.0     # a worker that dies after this long is replaced alone; sooner, it failed to start


def settings_of(cls: type[S]) -> S:
    """A service's settings from its environment; a bad value stops it with one line naming the variable."""
    try:
        return cls.from_env()
    except SettingsError as exc:
        raise SystemExit(f"switchyard: {exc}") from None


def require_seconds(settings: ServiceSettings, names: tuple[str, ...]) -> None:
    """Stop in one line naming the variable unless each of these durations is a finite number of seconds above 0:
    they feed timers, which a NaN, an infinity or a zero would crash or spin long after start."""
    for name in names:
        value = getattr(settings, name)
        if not (math.isfinite(value) and value > 0):
            raise SystemExit(f"switchyard: SWITCHYARD_{name.upper()} must be a number of seconds above 0, not {value}")


def require_counts(settings: ServiceSettings, names: tuple[str, ...]) -> None:
    """Stop in one line naming the variable unless each of these counts is at least 1: none at a time (a batch, a
    pool, a limit of sockets) would wait for ever, spin, or refuse every call long after start."""
    for name in names:
        if (value := getattr(settings, name)) < 1:
            raise SystemExit(f"switchyard: SWITCHYARD_{name.upper()} must be at least 1, not {value}")


def require_numbers(settings: ServiceSettings) -> None:
    """Stop in one line naming the variable unless every number setting is finite and not negative: each is a
    count, a size, a duration or a ratio (the stricter bounds of some are checked by their service first)."""
    for field in msgspec.structs.fields(settings):
        value = getattr(settings, field.name)
        if field.type in (int, float) and not 0 <= value < math.inf:        # a NaN is never 0 or more
            kind = "a whole number" if field.type is int else "a finite number"
            raise SystemExit(f"switchyard: SWITCHYARD_{field.name.upper()} must be {kind}, 0 or more, not {value}")


def worker_count(workers: int) -> int:
    """A workers setting as a number of processes: 0 means one per core of this machine."""
    return workers if workers > 0 else max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                           else os.cpu_count() or 1)


def run(target: str, settings: ServiceSettings, interface: str = "asgi", websockets: bool = False,
        workers: int = 1, name: str = "", slots_dir: Path | None = None, server: str = "granian") -> None:
    """Serve an app factory (`module:function`) with granian: uvloop, HTTP/1.1 (and WebSocket upgrades when
    `websockets`), `workers` worker processes (numbered in `slots_dir` when more than one). An RSGI app may
    be served by our own server instead (`server="native"`: `http1.server`, in the same process shape, save that
    a worker dying after it served is replaced alone: `_run_native`).

    granian runs a main process and its workers; a worker dies with the main (SIGTERM, so it still
    drains), and the main, started by the supervisor, dies with its first worker to exit. granian
    listens with SO_REUSEPORT, so the port is checked first: a port another process listens on
    stops the service with one line naming the holder and exit code PORT_IN_USE_EXIT, instead of
    sharing it — unless `share_port_with` names the launcher and every listener is another of its
    processes (replicas of one stack sharing the gateway's port on purpose; the kernel spreads
    connections).
    """
    require_seconds(settings, ("connect_timeout_s", "request_timeout_s"))
    require_numbers(settings)
    if not port_is_free(settings.port, settings.host) and not ports.shared_within(settings.port,
                                                                                  settings.share_port_with):
        holder = ports.holder(settings.port)
        print(f"switchyard: port {settings.port} on {settings.host} is already in use"
              f"{f' by {holder}' if holder else ''}", file=sys.stderr, flush=True)
        raise SystemExit(ports.PORT_IN_USE_EXIT)
    raise_open_file_limit()
    slots = None
    if workers > 1:
        slots = (slots_dir or Path("."), settings.instance or name or "worker", workers)
    if server == "native":
        if interface != "rsgi":
            raise ValueError("the native server serves RSGI apps only")
        _run_native(target, settings, workers, slots)
        return
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops

    Granian(
        target, address=settings.host, port=settings.port, interface=Interfaces(interface),
        factory=True, workers=workers, loop=Loops.uvloop, http=HTTPModes.http1, websockets=websockets,
        log_enabled=False, backlog=2048,
    ).serve(target_loader=functools.partial(_load_in_worker, os.getpid(), slots))


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit (inherited by its workers) and return it:
    a server holds a file per client and per upstream connection, and the soft limit many systems start
    processes with (1,024) is reached by a few hundred idle clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)   # Linux's usual fs.nr_open
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _run_native(target: str, settings: ServiceSettings, workers: int, slots: tuple[Path, str, int] | None) -> None:
    """granian's process shape with our server: this lean main forks `workers` workers, each listening on the
    port itself (SO_REUSEPORT: the kernel spreads connections evenly); SIGTERM or SIGINT is passed on to
    them (they drain). A worker that dies after WORKER_SETTLED_S is replaced alone (it takes its slot, and its
    journal, again) while the others serve: ending them all took the port down for seconds. One that dies
    sooner failed to start (a setting, its port, NATS): it ends the others and this process, with its exit
    code, for the supervisor to see. One worker is this process itself: a main with nothing to share out
    would hold its tens of megabytes for nothing (the process still dies with whoever started it, as every
    supervised process does)."""
    if workers == 1:
        _worker_then_exit(target, settings, None, slots)
    main_pid = os.getpid()
    children: dict[int, float] = {}             # pid -> when it was forked (monotonic)

    def fork_worker() -> None:
        # Signals wait while forking: a replacement is forked after this main's handlers are set, and a SIGTERM
        # reaching the child before it reset them ran the main's `stop` in the child, which then served on as a
        # worker that the main, stopping, waited for without end.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        pid = os.fork()
        if pid == 0:
            for number in (signal.SIGTERM, signal.SIGINT):
                signal.signal(number, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)     # a SIGTERM already sent ends the child now
            _worker_then_exit(target, settings, main_pid, slots)
        children[pid] = time.monotonic()
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    for _ in range(workers):
        fork_worker()
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    exit_code = 0
    while children:
        pid, status = os.wait()
        forked = children.pop(pid, None)
        if forked is None or stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        if time.monotonic() - forked >= WORKER_SETTLED_S:      # it had served: replace it, the others serve on
            print(f"switchyard: worker {pid} exited ({code}); replacing it", file=sys.stderr, flush=True)
            fork_worker()
            continue
        exit_code = code if code > 0 else 1     # it failed to start: so does the service, and the others end
        stop(signal.SIGTERM, None)
    raise SystemExit(exit_code)


def _worker_then_exit(target: str, settings: ServiceSettings, main_pid: int | None,
                      slots: tuple[Path, str, int] | None) -> NoReturn:
    """Run one worker, then end the process with its exit code at once: what its app left behind (a task that
    failed during a start-up already logged in one line) is not finalized into tracebacks on the way out."""
    code = 1
    try:
        _native_worker(target, settings, main_pid, slots)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if isinstance(exc.code, str):       # a refusal in words, met as the app was built: said, not swallowed
            print(exc.code if exc.code.startswith("switchyard: ") else f"switchyard: {exc.code}", file=sys.stderr)
    except BaseException:  # noqa: BLE001 — printed, then the worker's exit code says it failed
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _native_worker(target: str, settings: ServiceSettings, main_pid: int | None,
                   slots: tuple[Path, str, int] | None) -> None:
    """One worker: its own listening socket on the port, the app built, served until SIGTERM, then stopped
    (`main_pid`: the main it dies with; None when it is the service's only process)."""
    import asyncio
    import socket

    import uvloop

    from switchyard_gateway.http1.server import Server
    from switchyard_gateway.kit.service import StartFailed

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        print(f"switchyard: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr,
              flush=True)
        raise SystemExit(ports.PORT_IN_USE_EXIT) from exc
    sock.setblocking(False)
    app = _load_in_worker(main_pid, slots, target)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        app.__rsgi_init__(loop)
    except StartFailed as exc:                   # its reason is in the service's log already, in one line
        raise SystemExit(0 if exc.stopped else 1) from None
    # Listening only now: a socket sharing the port joins the kernel's share of new connections when it listens,
    # so none waits out a worker's start-up (seconds: NATS, the catalog) while another worker or replica serves.
    sock.listen(2048)
    try:
        loop.run_until_complete(Server(app, loop, **server_options(settings)).serve(sock, signals=True))
    finally:
        app.__rsgi_del__(loop)
        loop.close()


def server_options(settings: Any) -> dict[str, Any]:
    """Our HTTP server's bounds a service's settings name: its `http_*` timeouts and connection bound, and the
    gateway's WebSocket message deadline (`ws_message_timeout_s`)."""
    options = {name: getattr(settings, f"http_{name}") for name in ("head_timeout_s", "body_timeout_s",
                                                                     "keep_alive_s", "send_timeout_s", "max_connections")
               if hasattr(settings, f"http_{name}")}
    if hasattr(settings, "ws_message_timeout_s"):
        options["ws_message_timeout_s"] = settings.ws_message_timeout_s
    return options


def _load_in_worker(main_pid: int | None, slots: tuple[Path, str, int] | None, target: str) -> Any:
    """Runs in each worker: tie its life to the main process (if it has one), name the worker, then build the
    app."""
    if main_pid is not None:
        die_with_parent(signal.SIGTERM, main_pid)
    if slots is not None:
        directory, base, count = slots
        number = claim_slot(directory, base, count)
        os.environ[ENV_PREFIX + "INSTANCE"] = f"{base}-w{number}"     # read by the app's Settings.from_env
        os.environ[ENV_PREFIX + "WORKER"] = str(number)
        os.environ[ENV_PREFIX + "WORKERS"] = str(count)
    module, _, factory = target.partition(":")
    return getattr(importlib.import_module(module), factory)()


def claim_slot(directory: Path, base: str, count: int, wait_s: float = SLOT_WAIT_S) -> int:
    """The lowest worker number (1..count) whose lock in `directory` is free, held until this process exits."""
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for number in range(1, count + 1):
            fd = os.open(directory / f"{base}-w{number}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return number           # the descriptor stays open (not inherited across exec): the slot is ours
        if time.monotonic() > deadline:
            raise SystemExit(f"switchyard: every worker slot of {base} in {directory} is held")
        time.sleep(0.1)             # a predecessor still stopping; its slot frees when it exits
