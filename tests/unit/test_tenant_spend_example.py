"""examples/tenant_spend.py, run as a reader would, says in one line why it cannot reach the database it is given."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tenant_spend.py"


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port bound and never listened on, held while the test runs: a connection to it is refused, and no
    other process of a busy machine can start listening there meanwhile (a port closed again could be taken)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.mark.parametrize("report", [True, False])
def test_an_unreachable_database_is_one_line_with_its_password_masked(report: bool) -> None:
    with refusing_port() as database, refusing_port() as nats:
        url = f"postgresql://billing:hunter2@127.0.0.1:{database}/billing"
        done = subprocess.run([sys.executable, str(EXAMPLE), "--database", url,
                               *(["--report"] if report else ["--nats", f"nats://127.0.0.1:{nats}"])],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"tenant_spend.py: cannot reach the database {url.replace('hunter2', '***')}: ")
    assert done.stderr.count("\n") == 1 and "hunter2" not in done.stderr, done.stderr
