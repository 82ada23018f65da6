"""How the command speaks to its operator: one line on stderr, prefixed."""

from __future__ import annotations

import sys


def say(text: str) -> None:
    print(f"switchyard: {text}", file=sys.stderr, flush=True)
