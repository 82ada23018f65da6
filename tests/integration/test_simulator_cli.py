"""`python -m switchyard_gateway.simulator` as a subprocess: prints its URL, serves, exits cleanly on a signal."""

import signal
import socket
import subprocess
import sys

import httpx

COMMAND = [sys.executable, "-m", "switchyard_gateway.simulator"]


def test_cli_serves_until_sigterm_and_exits_cleanly():
    args = ["--port", "0", "--tokens", "3", "--models", "m1"]
    with subprocess.Popen(
        COMMAND + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            url = proc.stdout.readline().split(" on ", 1)[1].split()[0]
            assert url.startswith("http://127.0.0.1:")
            reply = httpx.post(
                url + "/v1/chat/completions",
                json={"model": "m1", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert reply.json()["usage"]["completion_tokens"] == 3
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.stderr.read() == ""


def test_cli_reports_a_port_in_use_and_exits_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            COMMAND + ["--port", str(port)], capture_output=True, text=True, timeout=20
        )
    assert done.returncode == 1
    assert "cannot listen" in done.stderr
