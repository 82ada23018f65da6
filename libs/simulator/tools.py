"""Tool calls and stop strings, as model servers answer them: which tool a reply calls, its arguments, where a stop string cuts.

With the `call_tools` knob on, a chat request that offers tools is answered by a call to one of them
(the one `tool_choice` names, else the first) unless its last message is a tool result or its
`tool_choice` is `none`; after a tool result the reply is text again, so a client's round trip
completes. Arguments are built from the tool's JSON schema, the same for the same model and tool.
Offered tools count toward the prompt's tokens, as every server that renders them into the prompt bills them.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from switchyard_gateway.simulator import synth


class Function(msgspec.Struct):
    name: str = ""
    parameters: dict[str, Any] | None = None
    description: str = ""


class Tool(msgspec.Struct):
    """An offered tool, OpenAI's shape (Ollama uses it too)."""

    type: str = "function"
    function: Function | None = None


def offered_tokens(tools: list[Tool] | None) -> int:
    """What offering tools adds to a prompt's tokens, as a server that renders them into the prompt counts it:
    the words of each one's name, description and parameter schema."""
    return sum(len(_WORDS.findall(msgspec.json.encode(tool).decode())) for tool in tools or ())


_WORDS = re.compile(r"\w+")


def chosen_tool(tools: list[Tool] | None, tool_choice: Any, last_role: str | None) -> Function | None:
    """The tool a reply calls, or None when it answers in text."""
    offered = [t.function for t in tools or () if t.function is not None and t.function.name]
    if not offered or last_role == "tool" or tool_choice == "none":
        return None
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        return next((f for f in offered if f.name == name), offered[0])
    return offered[0]


def arguments(model: str, function: Function) -> dict[str, Any]:
    """Arguments for every property of the tool's schema: a word for strings, the first of an enum, 1 for numbers."""
    properties = (function.parameters or {}).get("properties") or {}
    words = synth.reply_tokens(model, function.name, max(1, len(properties)))
    out: dict[str, Any] = {}
    for (name, schema), word in zip(properties.items(), words, strict=False):
        out[name] = _value(schema if isinstance(schema, dict) else {}, word.strip(" .").lower())
    return out


def _value(schema: dict[str, Any], word: str) -> Any:
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return word


def cut_at_stop(tokens: tuple[str, ...], stops: str | list[str] | None) -> tuple[tuple[str, ...], str | None]:
    """The tokens before the first stop string in the reply (the stop string itself left out), and that string."""
    if not stops:
        return tokens, None
    text = "".join(tokens)
    found = [(text.find(stop), stop) for stop in ([stops] if isinstance(stops, str) else stops) if stop]
    found = [(at, stop) for at, stop in found if at >= 0]
    if not found:
        return tokens, None
    at, stop = min(found)
    kept: list[str] = []
    length = 0
    for token in tokens:
        if length + len(token) > at:
            if at > length:
                kept.append(token[:at - length])
            break
        kept.append(token)
        length += len(token)
    return tuple(kept), stop
