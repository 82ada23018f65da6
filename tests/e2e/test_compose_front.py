"""compose's nginx front (deploy/compose/nginx.conf), run for real in front of the demo gateway: calls and streams
pass through it, a body over the gateway's limit gets the gateway's own 413, and one over nginx's own limit gets
nginx's 413 in the door's error shape (it was an HTML page no client could read).

The configuration is the file compose mounts, with only what compose's network provides replaced: the gateways'
names by the demo gateway's loopback address, the listening port, and the paths nginx writes to. Needs the `nginx`
binary (Debian's nginx-light; `.ci/run` installs it); without it these tests skip and say so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from switchyard_gateway.kit.stack_proc import pick_free_port
from tests.conftest import REPO, DemoStack

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="no nginx binary (apt-get install nginx-light; .ci/run "
                                                        "installs it): compose's front cannot be run here")
FRONT_LIMIT = 16 * 1024 * 1024          # nginx.conf's client_max_body_size


def front_config(gateway_port: int, port: int, work: Path) -> str:
    """nginx.conf with what compose's network gives it replaced: the gateways, the port, the paths written to."""
    conf = (REPO / "deploy" / "compose" / "nginx.conf").read_text()
    conf, gateways = re.subn(r"(upstream gateways \{\n)(\s*server gateway-\d+:8080;\n)+",
                             rf"\g<1>        server 127.0.0.1:{gateway_port};\n", conf)
    conf, listens = re.subn(r"listen 8080;", f"listen 127.0.0.1:{port};", conf)
    assert gateways == listens == 1, "nginx.conf's upstream block or listen line changed: update this test"
    paths = "".join(f"    {name}_temp_path {work / name};\n" for name in ("client_body", "proxy"))
    conf = conf.replace("http {\n", f"http {{\n    access_log off;\n{paths}", 1)
    user = "user root;\n" if os.geteuid() == 0 else ""   # workers write the temp paths, which are ours alone
    return f"daemon off;\npid {work / 'nginx.pid'};\n{user}" + conf


@pytest.fixture(scope="module")
def front(demo: DemoStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("nginx-front")
    port = pick_free_port(set())
    (work / "nginx.conf").write_text(front_config(demo.port, port, work))
    checked = subprocess.run([NGINX, "-t", "-p", str(work), "-c", str(work / "nginx.conf"), "-e", str(work / "error.log")],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    proc = subprocess.Popen([NGINX, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", str(work / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while not _listening(port):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "nginx did not listen within 15 s"
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def chat(model: str = "llama3.2", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "through the front"}], **extra}


def test_calls_and_streams_pass_through_the_front(front: str, demo: DemoStack) -> None:
    headers = {"Authorization": f"Bearer {demo.demo_key}"}
    reply = httpx.post(f"{front}/v1/chat/completions", headers=headers, json=chat(), timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] and reply.headers["x-request-id"]
    with httpx.stream("POST", f"{front}/v1/chat/completions", headers=headers, json=chat(stream=True),
                      timeout=30) as streamed:
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
        events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) > 2


def head_only(front: str, path: str, length: int, key: str) -> tuple[int, str, bytes]:
    """Send a request's head announcing `length` bytes of body and none of them; what the front answers."""
    host, port = front.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: front\r\nAuthorization: Bearer {key}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    content_type = next((line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("content-type:")), "")
    return int(lines[0].split()[1]), content_type, body


def _length(answer: bytes) -> int:
    found = re.search(rb"(?im)^content-length:\s*(\d+)", answer.split(b"\r\n\r\n", 1)[0])
    return int(found.group(1)) if found else 0


OVER_THE_FRONT = {
    "/v1/chat/completions": {"error": {"message": f"Request body is larger than the {FRONT_LIMIT} byte limit",
                                       "type": "invalid_request_error", "param": None, "code": "payload_too_large"}},
    "/v1/messages": {"type": "error", "error": {"type": "request_too_large",
                                                "message": f"Request body is larger than the {FRONT_LIMIT} byte limit"}},
    "/api/chat": {"error": f"Request body is larger than the {FRONT_LIMIT} byte limit"},
}


@pytest.mark.parametrize("path", list(OVER_THE_FRONT))
def test_a_body_over_the_fronts_limit_is_refused_in_the_doors_shape(front: str, demo: DemoStack, path: str) -> None:
    status, content_type, body = head_only(front, path, FRONT_LIMIT + 1, demo.demo_key)
    assert (status, content_type) == (413, "application/json"), body[:200]
    assert json.loads(body) == OVER_THE_FRONT[path]


@pytest.mark.parametrize(("path", "read"), [
    ("/v1/chat/completions", lambda b: b["error"]["code"]), ("/v1/messages", lambda b: b["error"]["type"]),
    ("/api/chat", lambda b: b["error"])])
def test_a_body_over_the_gateways_limit_gets_the_gateways_own_413_through_the_front(
        front: str, demo: DemoStack, path: str, read: object) -> None:
    body = json.dumps(chat(filler="x" * (5 * 1024 * 1024))).encode()       # over the gateway's 4 MiB, under 16
    reply = httpx.post(f"{front}{path}", content=body, timeout=30,
                       headers={"Authorization": f"Bearer {demo.demo_key}", "Content-Type": "application/json",
                                "anthropic-version": "2023-06-01"})
    assert reply.status_code == 413, reply.text[:300]
    said = read(reply.json())  # type: ignore[operator]
    assert said in ("payload_too_large", "request_too_large") or "4194304 byte limit" in said, reply.text[:300]
    assert "x-request-id" in reply.headers                                   # the gateway's, not nginx's
