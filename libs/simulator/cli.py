"""`switchyard simulate-upstream`: run the simulator until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
from collections.abc import Callable

from switchyard_gateway.simulator.config import FAILURE_KINDS, ConfigError, SimConfig
from switchyard_gateway.simulator.server import Simulator

PROG = "switchyard simulate-upstream"

_DEFAULTS = SimConfig()


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: any free one): the socket layer would wrap 70000 to 4464, and refuse -1 cryptically."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port from 0 to 65535")
    return value


def _milliseconds(text: str) -> float:
    """A finite delay of 0 or more: an infinite one would hang every call, a NaN be taken as none."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if not 0 <= value < math.inf:                   # a NaN is never 0 or more
        raise argparse.ArgumentTypeError(f"{text} is not a finite number of milliseconds, 0 or more")
    return value


def _switch(text: str) -> bool:
    if text.lower() in ("true", "yes", "on", "1"):
        return True
    if text.lower() in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not '{text}'")


# flag -> (type, help); the knob is the flag's name with underscores, its default SimConfig's.
KNOB_FLAGS: dict[str, tuple[Callable[[str], object], str]] = {
    "--models": (_names, "advertised models, comma-separated"),
    "--loaded": (_names, "models /api/ps reports as loaded, comma-separated (default: all)"),
    "--latency-ms": (_milliseconds, "delay before each reply's first byte"),
    "--token-interval-ms": (_milliseconds, "delay between streamed chunks"),
    "--end-delay-ms": (_milliseconds, "delay between a streamed reply's last event and the end of its body"),
    "--tokens": (int, "completion tokens per reply, capped by max_tokens / num_predict"),
    "--embedding-dims": (int, "embedding vector size"),
    "--failure-rate": (float, "share of upstream calls that fail, 0..1"),
    "--failure-kind": (str, f"how calls fail: {', '.join(FAILURE_KINDS)}"),
    "--retry-after-s": (int, "the Retry-After header of http_429 failures"),
    "--failure-paths": (_names, "only these routes fail, comma-separated (default: every route)"),
    "--cached-tokens": (int, "prompt tokens reported as read from a prompt cache (OpenAI prompt_tokens_details, "
                               "Ollama prompt_eval_cached_count)"),
    "--image-tokens": (int, "prompt tokens billed for each image a call sends (OpenAI image_url parts, Ollama "
                            "images), as a vision model would"),
    "--api-key": (str, "the bearer key every call must carry (401 without it; default: none needed)"),
    "--call-tools": (_switch, "answer a chat that offers tools with a call to one (the one tool_choice names, "
                              "else the first), in text again after a tool result: true or false"),
    "--seed": (int, "seed of the (repeatable) choice of failing calls"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Simulate upstream model servers (Ollama /api/*, OpenAI and vLLM /v1/*) over HTTP, "
            "with deterministic replies and injectable latency and failures. Change knobs at "
            "runtime with POST /_sim/config (a partial JSON config); GET /_sim/stats counts "
            "requests by path and POST /_sim/reset zeroes the counts."
        ),
        epilog=(
            "With --failure-kind refuse the main port stops listening, taking its /_sim/ routes "
            "with it: give --control-port to keep a port that serves /_sim/ only."
        ),
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=11434,
        help="port to bind, 0 for any free one (default: %(default)s)",
    )
    parser.add_argument(
        "--control-port", type=_port,
        help="also serve the /_sim/ routes on this port (0: any free one), never refused"
    )
    knobs = parser.add_argument_group("knobs (all changeable at runtime)")
    for flag, (kind, text) in KNOB_FLAGS.items():
        default = getattr(_DEFAULTS, flag[2:].replace("-", "_"))
        shown = ",".join(default) if isinstance(default, tuple) else default
        if default is not None and "(default:" not in text and shown != "":   # the text may say it in words
            text = f"{text} (default: {shown})"
        choices = FAILURE_KINDS if flag == "--failure-kind" else None
        knobs.add_argument(flag, type=kind, choices=choices, help=text)
    return parser


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The SimConfig the flags describe; flags not given keep their defaults."""
    names = [name for name in SimConfig.__struct_fields__ if getattr(args, name, None) is not None]
    return _DEFAULTS.with_changes({name: getattr(args, name) for name in names})


def main(argv: list[str] | None = None) -> int:
    """Parse flags, serve until SIGINT or SIGTERM, and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.control_port is not None and args.control_port == args.port != 0:
        parser.error(f"--control-port must be another port than --port ({args.port})")
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        parser.error(str(exc))
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_serve(config, args.host, args.port, args.control_port))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(config: SimConfig, host: str, port: int, control_port: int | None) -> int:
    sim = Simulator(config)
    try:
        await sim.start(host, port, control_port=control_port)
    except OSError as exc:
        ports = f"{port} or the control port {control_port}" if control_port is not None else port
        print(f"{PROG}: cannot listen on {host}:{ports}: {exc}", file=sys.stderr)
        return 1
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    control = f" (control on {sim.control_url}/_sim/)" if sim.control_url else ""
    print(f"simulating upstream model servers on {sim.url}{control}", flush=True)
    try:
        await stopping.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await sim.stop()
    return 0
