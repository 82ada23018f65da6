"""What Ollama refuses in a call that a field's type cannot say: checked before anything is reserved, each a 400 naming the field.

Ollama reads `images` as base64 (Go's decoder: padded, line ends skipped), `tools` as a list of
objects, and refuses `raw` beside a `template`, a `system` or a `context`. Sent on, each was
Ollama's 400 (or an OpenAI-compatible server's) after the call's quota was held. Its integer
options take any JSON number, truncated (`5.0` and `5.5` are 5): `whole` is such an option's type.
"""

from __future__ import annotations

import binascii
from typing import Annotated, Any

import msgspec

from switchyard_gateway.services.gateway.edge.errors import BadRequest


def whole(low: int, high: int | None = None) -> Any:
    """The type of an Ollama integer option from `low` to `high`: an int, or a float whose whole part is one (read
    as Ollama reads it, truncated toward zero: keep `truncated` on the value)."""
    floor = msgspec.Meta(gt=low - 1) if low <= 0 else msgspec.Meta(ge=low)
    if high is None:
        return Annotated[int, msgspec.Meta(ge=low)] | Annotated[float, floor]
    return Annotated[int, msgspec.Meta(ge=low, le=high)] | Annotated[float, floor, msgspec.Meta(lt=high + 1)]


def truncated(value: int | float | None) -> int | None:
    """An integer option's value as Ollama takes it."""
    return int(value) if type(value) is float else value      # type: ignore[arg-type]


def check_images(images: list[str] | None, param: str) -> None:
    """Each image is base64, as Ollama reads it; else 400 naming it (`data:` URLs and paths are not)."""
    for number, image in enumerate(images or ()):
        if "\n" in image or "\r" in image:
            image = image.replace("\r", "").replace("\n", "")
        try:
            binascii.a2b_base64(image, strict_mode=True)
        except (binascii.Error, ValueError):
            where = f"{param}[{number}]"
            raise BadRequest(f"Invalid '{where}': an image is its bytes in base64, as Ollama reads it", param=where,
                             code="invalid_value") from None


_decode_tools = msgspec.json.Decoder(list[dict[str, msgspec.Raw]] | None).decode


def check_tools(raw: msgspec.Raw) -> None:
    """`tools` is a list of objects (or absent, or null); else 400 naming it or the item that is not one."""
    if not raw:
        return
    try:
        _decode_tools(bytes(raw))
    except msgspec.ValidationError as exc:
        text = str(exc)
        said, at, path = text.rpartition(" - at `$")
        param = f"tools{path[:-1]}" if at else "tools"
        raise BadRequest(f"Invalid '{param}': {said if at else text}", param=param, code="invalid_value") from None


def check_raw(raw: bool, system: str | None, template: str | None, context: list[int] | None) -> None:
    """A `raw` generate has no template, system or context, as Ollama refuses; 400 naming the first given."""
    if not raw:
        return
    for name, value in (("system", system), ("template", template), ("context", context)):
        if value:
            raise BadRequest(f"Invalid '{name}': raw mode does not support template, system, or context", param=name,
                             code="invalid_value")
