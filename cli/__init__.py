"""The `switchyard` command: run the system, the upstream simulator, and event-log tools.

The composition root: the one package that imports services (each command is a module here).
"""

from __future__ import annotations

import argparse
import os
import sys

from switchyard_gateway.cli import config, events, failures, natsconfig, replay, up
from switchyard_gateway.cli.say import say

COMMANDS = {"up": up, "config": config, "replay": replay, "events": events, "nats-config": natsconfig}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchyard",
        description="Switchyard, an AI model gateway: one OpenAI-, Anthropic- and Ollama-compatible front door for "
                    "every model server, with routing, quotas and an event-sourced usage log.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up.register(sub)
    config.register(sub)
    sim = sub.add_parser("simulate-upstream", add_help=False,
                         help="run the upstream model-server simulator (OpenAI and Ollama APIs)")
    sim.add_argument("args", nargs=argparse.REMAINDER)
    replay.register(sub)
    events.register(sub)
    natsconfig.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = None
    try:
        if argv[:1] == ["simulate-upstream"]:
            from switchyard_gateway.simulator import main as simulate
            return simulate(argv[1:]) or 0
        args = _parser().parse_args(events.joined_ages(argv))
        code = COMMANDS[args.command].run(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # whoever read the output stopped reading (`switchyard events schema ... | head`): nothing more to say,
        # and nothing to flush at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        line = failures.described(exc, args)    # a server or a file failed us: one line; a bug keeps its traceback
        if line is None:
            raise
        say(line)
        return 1
