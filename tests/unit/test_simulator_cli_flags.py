"""`switchyard simulate-upstream` refuses a port or a delay it could not honour, in one argparse line, before it
listens: a port past 65535 was wrapped (70000 listened on 4464), an infinite delay hung every call."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMAND = [sys.executable, "-m", "switchyard_gateway.simulator"]


@pytest.mark.parametrize(("args", "says"), [
    (["--port", "70000"], "argument --port: 70000 is not a port from 0 to 65535"),
    (["--port", "-1"], "argument --port: -1 is not a port from 0 to 65535"),
    (["--port", "http"], "argument --port: 'http' is not a port number"),
    (["--port", "0", "--control-port", "-5"], "argument --control-port: -5 is not a port from 0 to 65535"),
    (["--port", "0", "--control-port", "65536"], "argument --control-port: 65536 is not a port from 0 to 65535"),
    (["--port", "23260", "--control-port", "23260"], "--control-port must be another port than --port (23260)"),
    (["--port", "0", "--latency-ms", "inf"], "argument --latency-ms: inf is not a finite number of milliseconds"),
    (["--port", "0", "--latency-ms", "nan"], "argument --latency-ms: nan is not a finite number of milliseconds"),
    (["--port", "0", "--token-interval-ms", "1e400"], "argument --token-interval-ms: 1e400 is not a finite"),
    (["--port", "0", "--end-delay-ms", "soon"], "argument --end-delay-ms: 'soon' is not a number of milliseconds"),
])
def test_a_port_or_a_delay_it_cannot_honour_is_refused_before_it_listens(args: list[str], says: str) -> None:
    done = subprocess.run(COMMAND + args, capture_output=True, text=True, timeout=20)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == "" and f"switchyard simulate-upstream: error: {says}" in done.stderr, done.stderr


def test_port_0_and_a_control_port_0_each_take_any_free_port() -> None:
    with subprocess.Popen(COMMAND + ["--port", "0", "--control-port", "0", "--latency-ms", "1.5"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stdout.readline()
        finally:
            proc.terminate()
            proc.wait(10)
    assert line.startswith("simulating upstream model servers on http://127.0.0.1:") and "(control on" in line, line
