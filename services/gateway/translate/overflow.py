"""An upstream's refusal of a prompt its model's context cannot hold, said as each door's clients recognise it.

Model servers refuse such a prompt each in their own words (llama.cpp's `exceed_context_size_error` with its counts,
the sentences of vLLM, SGLang and text-generation-inference, OpenAI's `context_length_exceeded`), and clients act on
one form only: the OpenAI SDKs' users and Codex on `code: "context_length_exceeded"`, Claude Code and other Anthropic
clients on `prompt is too long: N tokens > M maximum` (and, when the prompt fits but not with the output asked for,
on `input length and `max_tokens` exceed context limit: P + O > C`, which Claude Code answers by asking for less
output). The doors' error mappings ask `overflow_of` about each 400 an upstream answers and, when it is one, say it
in their own form, with the server's counts when it gave them. The Ollama door relays the server's words: Ollama's
clients have no form of their own to act on.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

OVERFLOW_CODE = "context_length_exceeded"        # OpenAI's code, for chat and Responses alike


class Overflow(NamedTuple):
    """What the server said of the refused request: each count None when it did not say it."""

    context: int | None          # the model's context, in tokens
    prompt: int | None           # the prompt, as the server counted it
    output: int | None           # the output tokens asked for, when the server counted them in

    @property
    def prompt_fits(self) -> bool:
        """The prompt alone fits, so asking for fewer output tokens would do (known only with all three counts)."""
        return self.context is not None and self.prompt is not None and self.output is not None \
            and self.prompt <= self.context


# sentences of the servers that refuse this way; each names at least the refusal, most the counts too
_SAID = re.compile(r"maximum context length is|exceeds? the available context size|longer than the maximum model "
                   r"length|longer than the model's context length|`inputs` tokens \+ `max_new_tokens` must be", re.I)
_CONTEXT = (re.compile(r"maximum context length is (\d+)", re.I), re.compile(r"context size \((\d+) tokens\)", re.I),
            re.compile(r"maximum model length of (\d+)", re.I), re.compile(r"context length \((\d+) tokens\)", re.I),
            re.compile(r"must be <= (\d+)", re.I))
_PROMPT = (re.compile(r"resulted in (\d+) tokens", re.I), re.compile(r"(\d+) in the messages", re.I),
           re.compile(r"has (\d+) input tokens", re.I), re.compile(r"prompt \(length (\d+)\)", re.I),
           re.compile(r"input \((\d+) tokens\)", re.I), re.compile(r"request \((\d+) tokens\)", re.I),
           re.compile(r"Given: (\d+) `inputs` tokens", re.I))
_OUTPUT = (re.compile(r"(\d+) in the completion", re.I), re.compile(r"is too large: (\d+)", re.I),
           re.compile(r"and (\d+) `max_new_tokens`", re.I))


def overflow_of(error: Any, status: int) -> Overflow | None:
    """The overflow a 400's error member (an object, or a server's plain text) says, or None when it says another
    thing (every other error is relayed as it was)."""
    if status != 400:
        return None
    if isinstance(error, dict):
        message = error.get("message")
        message = message if isinstance(message, str) else ""
        if error.get("type") == "exceed_context_size_error":           # llama.cpp, with its counts
            return Overflow(_count(error.get("n_ctx")), _count(error.get("n_prompt_tokens")), None)
        if error.get("code") != OVERFLOW_CODE and not _SAID.search(message):
            return None
    elif isinstance(error, str) and _SAID.search(error):
        message = error
    else:
        return None
    return Overflow(_found(_CONTEXT, message), _found(_PROMPT, message), _found(_OUTPUT, message))


def openai_overflow(overflow: Overflow, param: str) -> dict[str, Any]:
    """The error member OpenAI answers such a request with (`param`: `messages` for chat, `input` for Responses)."""
    if overflow.context is not None and overflow.prompt is not None:
        said = "your messages resulted in" if overflow.output is None else "you requested"
        asked = overflow.prompt if overflow.output is None else overflow.prompt + overflow.output
        message = (f"This model's maximum context length is {overflow.context} tokens. However, {said} {asked} "
                   "tokens. Please reduce the length of the messages.")
    else:
        message = "Your input exceeds the context window of this model. Please adjust your input and try again."
    return {"message": message, "type": "invalid_request_error", "param": param, "code": OVERFLOW_CODE}


def anthropic_overflow(overflow: Overflow) -> str:
    """The message Anthropic answers such a request with, in its words (its clients read the numbers in them)."""
    context, prompt, output = overflow
    if overflow.prompt_fits:
        return (f"input length and `max_tokens` exceed context limit: {prompt} + {output} > {context}, decrease "
                "input length or `max_tokens` and try again")
    if context is not None and prompt is not None:
        return f"prompt is too long: {prompt} tokens > {context} maximum"
    return "prompt is too long for this model's context"


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _found(patterns: tuple[re.Pattern[str], ...], message: str) -> int | None:
    for pattern in patterns:
        match = pattern.search(message)
        if match:
            return int(match.group(1))
    return None
