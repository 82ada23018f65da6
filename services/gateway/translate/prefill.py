"""A prefill: a final assistant turn the answer continues, and its repeat at the start of that answer.

Anthropic's Messages API and Ollama's `/api/chat` both continue a conversation whose last turn is the assistant's,
and answer with the continuation alone. An OpenAI-compatible server is asked for it with vLLM's
`continue_final_message: true` and `add_generation_prompt: false` (anthropic_requests.py says what each server
makes of them); OpenAI itself cannot continue one and answers a new turn. Some servers (llama-server) repeat the
prefill before the continuation: the doors take that repeat off, in whole answers (`after_prefill`) and in
streams (`PrefillEcho`), so the client sees what its own API would have sent.
"""

from __future__ import annotations

from typing import Any


def ask_to_continue(out: dict[str, Any]) -> None:
    """Ask an OpenAI-compatible server to continue the final assistant message of the chat body `out`."""
    out["continue_final_message"], out["add_generation_prompt"] = True, False


def after_prefill(text: str | None, prefill: str | None) -> str | None:
    """A whole answer's text, less a repeat of `prefill` at its start."""
    if prefill and text and text.startswith(prefill):
        return text[len(prefill):]
    return text


class PrefillEcho:
    """Takes a repeat of the prefill off the start of a streamed answer's text.

    `text(piece)` gives what of each piece of the answer's text to relay; text that only begins like the prefill is
    held (None) until it differs, then relayed whole, or until the prefill came whole, then dropped. `unheld()` gives
    what is held when something other than text (a tool call, the end) comes first: the answer's after all. `over`
    once the start of the answer is settled either way: the caller can stop asking.
    """

    __slots__ = ("_echo", "_held")

    def __init__(self, prefill: str) -> None:
        self._echo: str | None = prefill or None     # the part of the prefill a repeat has still to show
        self._held = ""                              # the answer's text so far, while it may be that repeat

    @property
    def over(self) -> bool:
        return self._echo is None

    def text(self, text: str) -> str | None:
        echo = self._echo
        if echo is None or not text:
            return text
        seen = text[:len(echo)]
        if not echo.startswith(seen):                 # no repeat: what was held is the answer's
            text, self._echo, self._held = self._held + text, None, ""
            return text
        if len(seen) < len(echo):                     # the repeat so far: held
            self._echo, self._held = echo[len(seen):], self._held + seen
            return None
        self._echo, self._held = None, ""             # the whole prefill repeated: dropped
        return text[len(seen):]

    def unheld(self) -> str:
        if self._echo is None:
            return ""
        held, self._echo, self._held = self._held, None, ""
        return held
