"""Deterministic model output: token counts, reply tokens and unit embedding vectors."""

from __future__ import annotations

import base64
import hashlib
import math
import sys
from array import array
from functools import lru_cache

import msgspec

_MASK64 = (1 << 64) - 1

# 64 plain words; a reply is a walk through them chosen by a hash of model and prompt.
VOCAB: tuple[str, ...] = tuple(
    """the a switch yard model gateway token stream reply route quota upstream signal
    rail train track engine freight car station yard master lever points junction
    north south east west morning evening quick steady quiet bright careful simple
    request answer number letter record ledger meter window queue batch cache limit
    tenant provider endpoint fallback retry timeout health budget usage event fact
    order""".split()
)


def count_tokens(text: str) -> int:
    """Tokens in a prompt: its whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


def completion_tokens(configured: int, requested_max: int | None) -> int:
    """How many tokens a reply has: the configured count, capped by the request's maximum."""
    if requested_max is None or requested_max < 0:
        return configured
    return min(configured, requested_max)


def splitmix64(state: int) -> int:
    """One step of SplitMix64: a well-mixed 64-bit value from any integer."""
    z = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _seed(model: str, text: str) -> int:
    digest = hashlib.blake2b(f"{model}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@lru_cache(maxsize=4096)
def reply_tokens(model: str, prompt: str, n: int) -> tuple[str, ...]:
    """The n tokens of the reply to `prompt`; joined, they read as one sentence."""
    state = _seed(model, prompt)
    out = []
    for i in range(n):
        state = splitmix64(state)
        word = VOCAB[state % len(VOCAB)]
        if i == 0:
            out.append(word.capitalize())
        else:
            out.append(" " + word)
    if out:
        out[-1] += "."
    return tuple(out)


def reply_text(model: str, prompt: str, n: int) -> str:
    """The whole reply to `prompt`, as the concatenation of its tokens."""
    return "".join(reply_tokens(model, prompt, n))


class Embedding:
    """A unit vector as float32 values, with its little-endian float32 bytes."""

    __slots__ = ("values", "raw", "_json")

    def __init__(self, values: list[float], raw: bytes) -> None:
        self.values = values
        self.raw = raw
        self._json: msgspec.Raw | None = None

    def base64(self) -> str:
        return base64.b64encode(self.raw).decode()

    def json(self) -> msgspec.Raw:
        """The values as a JSON array, encoded once and embedded as is by msgspec."""
        if self._json is None:
            self._json = msgspec.Raw(msgspec.json.encode(self.values))
        return self._json


@lru_cache(maxsize=1024)
def embed(model: str, text: str, dims: int) -> Embedding:
    """A unit-length vector of `dims` float32 values, derived from model and text alone."""
    digest = hashlib.shake_256(f"{model}\x00{text}".encode()).digest(4 * dims)
    ints = array("i", digest)
    if sys.byteorder != "little":
        ints.byteswap()
    norm = math.sqrt(math.fsum(float(v) * v for v in ints)) or 1.0
    floats = array("f", [v / norm for v in ints])
    raw = floats.tobytes() if sys.byteorder == "little" else _swapped(floats)
    return Embedding(floats.tolist(), raw)


def _swapped(floats: array) -> bytes:
    copy = array("f", floats)
    copy.byteswap()
    return copy.tobytes()
