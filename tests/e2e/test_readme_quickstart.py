"""The README's quick start, run as a reader pastes it, against `switchyard up --demo`: its stream prints the
answer's text and nothing after it."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO, DemoStack


def quickstart() -> str:
    """The README's first Python block."""
    return re.search(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL).group(1)


def test_the_quickstart_stream_prints_the_text_alone(demo: DemoStack) -> None:
    code = quickstart()
    assert 'base_url="http://127.0.0.1:8080/v1"' in code and '"<demo key>"' in code
    code = code.replace("http://127.0.0.1:8080", demo.url).replace("<demo key>", demo.demo_key)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    streamed = done.stdout.splitlines()[1].split("Usage(", 1)[0]         # the next print goes on the same line
    assert streamed and not streamed.endswith("None"), done.stdout        # the last chunk's delta has no content
