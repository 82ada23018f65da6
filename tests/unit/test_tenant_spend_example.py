"""examples/tenant_spend.py, run as a reader would, says in one line why it cannot reach the database it is given."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tenant_spend.py"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]               # closed again: nothing listens there


@pytest.mark.parametrize("report", [True, False])
def test_an_unreachable_database_is_one_line_with_its_password_masked(report: bool) -> None:
    url = f"postgresql://billing:hunter2@127.0.0.1:{closed_port()}/billing"
    done = subprocess.run([sys.executable, str(EXAMPLE), "--database", url,
                           *(["--report"] if report else ["--nats", f"nats://127.0.0.1:{closed_port()}"])],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"tenant_spend.py: cannot reach the database {url.replace('hunter2', '***')}: ")
    assert done.stderr.count("\n") == 1 and "hunter2" not in done.stderr, done.stderr
