"""The tool calls a translating stream keeps until its answer ends, so that each is written whole.

A server streams a tool call in pieces: its id and name in the first (or a later one), its arguments in any number
after, and text or reasoning may come between two pieces of one call. The three translating streams (Ollama,
Anthropic, Responses) keep every call here and write each at the end, whole, in the order the calls began.
"""

from __future__ import annotations


class HeldCall:
    """One tool call as pieces came: its id and name ("" while none came) and its argument pieces."""

    __slots__ = ("id", "name", "pieces")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.pieces: list[str] = []

    @property
    def arguments(self) -> str:
        return "".join(self.pieces)


class HeldCalls:
    """The tool calls of one answer, from the pieces a stream gives of them.

    A piece names its call by a key (the upstream's index, or a count where the upstream gives none) and may carry
    the call's id, its name and a piece of its arguments, any of them empty. The first id and the first name given
    are the call's. A piece naming another id than the one its key's call has begins a new call: a server may number
    the calls after a text run from 0 again.
    """

    __slots__ = ("_calls", "_current")

    def __init__(self) -> None:
        self._calls: list[HeldCall] = []          # in the order they began
        self._current: dict[object, HeldCall] = {}    # key -> the call of that key taking pieces

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, key: object, call_id: str | None, name: str | None, fragment: str | None) -> bool:
        """Take a piece of call `key`; whether it began a call."""
        call = self._current.get(key)
        began = call is None or bool(call_id and call.id and call_id != call.id)
        if call is None or began:
            call = self._current[key] = HeldCall()
            self._calls.append(call)
        call.id = call.id or call_id or ""
        call.name = call.name or name or ""
        if fragment:
            call.pieces.append(fragment)
        return began

    def taken(self) -> list[HeldCall]:
        """The calls held, in the order they began; none are held after."""
        calls, self._calls = self._calls, []
        self._current.clear()
        return calls
