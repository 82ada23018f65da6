"""Run a client's own command (a coding agent, a Node script) against the gateway, as its users run it."""

from __future__ import annotations

import asyncio
from pathlib import Path


async def run_client(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                     timeout_s: float = 60) -> tuple[int, bytes, bytes]:
    """Its exit code, output and errors, once it ends; killed (and TimeoutError raised) if it has not by `timeout_s`.
    Its standard input is closed: a command waiting for a person fails at once instead of hanging."""
    proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out, err  # type: ignore[return-value]
