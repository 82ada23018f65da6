"""Every number a call carries is checked per door before anything is reserved: type, sign, zero, bound."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from switchyard_gateway.quotas.tokens import TokenEstimator
from switchyard_gateway.services.gateway.edge.errors import BadRequest
from switchyard_gateway.services.gateway.translate.asks import MAX_CHOICES, MAX_DIMENSIONS, check_tokens, read_request
from switchyard_gateway.services.gateway.translate.requests import (
    ollama_chat_to_openai, ollama_embed_to_openai, ollama_embeddings_to_openai, ollama_generate_request,
    ollama_set_model,
)

LIMIT = 4096                          # the model's context length in these tests
ESTIMATOR = TokenEstimator()
MESSAGES = [{"role": "user", "content": "hello there"}]
BASE: dict[str, dict[str, Any]] = {
    "openai.chat": {"model": "m", "messages": MESSAGES},
    "openai.completions": {"model": "m", "prompt": "hello there"},
    "openai.embeddings": {"model": "m", "input": "hello there"},
    "ollama.chat": {"model": "m", "messages": MESSAGES},
    "ollama.generate": {"model": "m", "prompt": "hello there"},
    "ollama.embed": {"model": "m", "input": "hello there"},
    "ollama.embeddings": {"model": "m", "prompt": "hello there"},
}
HUGE = (2**63 - 1, 2**63, 2**64, 10**30)
WRONG_TYPES = ("5", True, 5.5, [5], {"n": 5}, None)

# (api, field path, values refused) -- every count and range each door checks
REFUSED: list[tuple[str, str, tuple[Any, ...]]] = [
    *[(api, "max_tokens", (-1, -10**15, 0, LIMIT + 1, *HUGE, "5", True, 5.5))
      for api in ("openai.chat",)],
    ("openai.chat", "max_completion_tokens", (-1, 0, LIMIT + 1, *HUGE, "5", 1.5)),
    ("openai.completions", "max_tokens", (-1, LIMIT + 1, *HUGE, "5", False)),
    *[(api, "n", (0, -1, MAX_CHOICES + 1, *HUGE, "2", 2.0)) for api in ("openai.chat", "openai.completions")],
    ("openai.chat", "top_logprobs", (-1, 21, *HUGE, "3")),
    ("openai.completions", "logprobs", (-1, 6, *HUGE, "3")),
    ("openai.completions", "best_of", (0, 21, *HUGE, "2")),
    *[(api, "temperature", (-0.1, 2.1, 10**30, "hot")) for api in ("openai.chat", "openai.completions")],
    *[(api, "top_p", (-0.1, 1.1, "all")) for api in ("openai.chat", "openai.completions")],
    *[(api, field, (-2.1, 2.1, "x")) for api in ("openai.chat", "openai.completions")
      for field in ("presence_penalty", "frequency_penalty")],
    ("openai.chat", "seed", (2**63, -(2**63) - 1, "1", 1.5)),
    # sent on, the upstream refused them (its own 400, naming no field)
    ("openai.chat", "stop", (5, 1.5, {"a": 1})),
    ("openai.chat", "tools", ("x", 5, {"type": "function"})),
    ("openai.embeddings", "dimensions", (0, -1, MAX_DIMENSIONS + 1, *HUGE, "3", 3.0)),
    ("openai.embeddings", "encoding_format", ("utf8", 5)),
    ("openai.embeddings", "stream", (True,)),        # answered whole: sent on, it opened every endpoint's breaker
    *[(api, "options.num_predict", (-3, -3.5, -10**15, LIMIT + 1, LIMIT + 1.5, *HUGE, 1e300, "5", True))
      for api in ("ollama.chat", "ollama.generate")],
    *[(api, "options.num_ctx", (0, -1, LIMIT + 1, *HUGE, "8192"))
      for api in ("ollama.chat", "ollama.generate", "ollama.embed")],
    *[(api, "options.temperature", (-1, "warm")) for api in ("ollama.chat", "ollama.generate")],
    *[(api, "options.top_k", (-1, -1.5, "3")) for api in ("ollama.chat", "ollama.generate")],
    *[(api, "options.stop", (5, {"a": 1})) for api in ("ollama.chat", "ollama.generate")],
    *[(api, "options.stop[0]", ([1, 2], [None])) for api in ("ollama.chat", "ollama.generate")],
    *[(api, "think", ("bogus", "HIGH", 5, [True], {})) for api in ("ollama.chat", "ollama.generate")],
    *[(api, "top_logprobs", (-1, 21, 2.5, "3")) for api in ("ollama.chat", "ollama.generate")],
    *[(api, "logprobs", ("yes", 1)) for api in ("ollama.chat", "ollama.generate")],
    ("ollama.chat", "tools", ("x", 5, {"type": "function"})),
    ("ollama.chat", "tools[0]", ([1], ["f"], [None])),
    ("ollama.chat", "tools[1]", ([{"type": "function"}, []],)),
    ("ollama.generate", "images[0]", (["!!!not base64"], ["data:image/png;base64,aGk="], ["file:///etc/passwd"],
                                      ["aGk"], ["=aGk="])),
    *[(api, "options.top_p", (-0.5, 2)) for api in ("ollama.chat", "ollama.generate")],
    ("ollama.embed", "dimensions", (0, MAX_DIMENSIONS + 1, *HUGE, "3")),
    *[(api, "keep_alive", ({"x": 1}, [1], True)) for api in ("ollama.chat", "ollama.generate", "ollama.embed")],
    ("ollama.embed", "truncate", ("no", 1)),
]
CASES = [(api, field, value) for api, field, values in REFUSED for value in values]


def body(api: str, field: str, value: Any) -> bytes:
    data = {**BASE[api]}
    if field.startswith("options."):
        data["options"] = {field.split(".", 1)[1].partition("[")[0]: value}
    else:
        data[field.partition("[")[0]] = value          # `tools[0]`: the item of `tools` refused
    return msgspec.json.encode(data)


def ask(api: str, raw: bytes):
    return read_request(api, raw).ask(LIMIT, ESTIMATOR)


@pytest.mark.parametrize(("api", "field", "value"), CASES, ids=[f"{a}:{f}={v!r}"[:80] for a, f, v in CASES])
def test_a_hostile_value_is_refused_naming_its_field(api: str, field: str, value: Any) -> None:
    with pytest.raises(BadRequest) as refused:
        ask(api, body(api, field, value))
    assert refused.value.status == 400 and refused.value.param == field
    assert field in str(refused.value), "the message names the field too (Ollama's error shape has no param)"


@pytest.mark.parametrize(("api", "field", "value"), [
    ("openai.chat", "max_tokens", 1), ("openai.chat", "max_tokens", LIMIT), ("openai.chat", "max_tokens", None),
    ("openai.chat", "max_completion_tokens", LIMIT), ("openai.chat", "n", MAX_CHOICES),
    ("openai.chat", "top_logprobs", 20), ("openai.chat", "seed", -(2**63)), ("openai.chat", "temperature", 2),
    ("openai.chat", "stop", "\n"), ("openai.chat", "stop", ["a", "b"]), ("openai.chat", "tools", None),
    ("openai.completions", "max_tokens", 0), ("openai.completions", "best_of", 20),
    ("openai.embeddings", "dimensions", MAX_DIMENSIONS), ("openai.embeddings", "encoding_format", "base64"),
    ("ollama.chat", "options.num_predict", -1), ("ollama.generate", "options.num_predict", -2),
    ("ollama.generate", "options.num_predict", 0), ("ollama.chat", "options.num_predict", LIMIT),
    ("ollama.chat", "options.num_ctx", LIMIT), ("ollama.embed", "dimensions", 1),
    ("ollama.chat", "keep_alive", "5m"), ("ollama.chat", "keep_alive", -1), ("ollama.embed", "truncate", False),
    ("ollama.chat", "options.num_predict", 5.0), ("ollama.generate", "options.num_predict", 5.5),
    ("ollama.chat", "options.num_predict", -2.9), ("ollama.chat", "options.num_ctx", 1.0),
    ("ollama.generate", "options.top_k", 1.5), ("ollama.chat", "options.seed", 7.0),
    ("ollama.chat", "options.stop", "x"), ("ollama.chat", "options.stop", ["a", "b"]),
    ("ollama.chat", "think", True), ("ollama.chat", "think", "high"), ("ollama.generate", "think", "max"),
    ("ollama.chat", "top_logprobs", 20), ("ollama.generate", "logprobs", True),
    ("ollama.chat", "tools", []), ("ollama.chat", "tools", [{"type": "function", "function": {"name": "f"}}]),
    ("ollama.generate", "images", ["aGk=", "aG\nk="]), ("ollama.generate", "raw", True),
])
def test_values_at_the_bounds_are_accepted(api: str, field: str, value: Any) -> None:
    assert ask(api, body(api, field, value)) is not None


@pytest.mark.parametrize("raw", [b'{"model": "m", "messages": []}', b'{"model": "m"}',
                                 b'{"model": "m", "messages": null}'])
def test_chat_needs_messages(raw: bytes) -> None:
    with pytest.raises(BadRequest) as refused:
        ask("openai.chat", raw)
    assert refused.value.param == "messages"


@pytest.mark.parametrize(("api", "raw", "param"), [
    ("openai.completions", b'{"model": "m"}', "prompt"),
    ("openai.embeddings", b'{"model": "m", "input": []}', "input"),
    ("openai.embeddings", b'{"model": "m", "input": ""}', "input"),
    ("openai.completions", b'{"model": "m", "prompt": "x", "n": 3, "best_of": 2}', "best_of"),
    ("openai.embeddings", b'{"model": "m", "input": [[1, -2]]}', "input[0][1]"),
    ("openai.chat", b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
    ("ollama.chat", b'{"model": "m", "messages": [{"images": "x"}]}', "messages[0].images"),
    ("ollama.generate", b'{"model": "m", "prompt": null}', "prompt"),
    ("openai.chat", b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
    ("openai.chat", b'{"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "wizard"}]}',
     "messages[1].role"),
    ("openai.chat", b'{"model": "m", "messages": [{"content": "x"}]}', "messages[0].role"),
    ("openai.chat", b'{"model": "m", "messages": [{"role": 1, "content": "x"}]}', "messages[0].role"),
])
def test_missing_and_malformed_fields_are_named(api: str, raw: bytes, param: str) -> None:
    with pytest.raises(BadRequest) as refused:
        ask(api, raw)
    assert refused.value.param == param


@pytest.mark.parametrize("depth", [1_000, 100_000, 1_000_000])
def test_json_nested_too_deep_is_a_400_not_a_crash(depth: int) -> None:
    raw = b'{"model": "m", "messages": [], "x": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(BadRequest) as refused:
        read_request("openai.chat", raw)
    assert refused.value.code == "json_too_deep"


def test_malformed_json_is_a_400() -> None:
    with pytest.raises(BadRequest) as refused:
        read_request("ollama.chat", b'{"model": "m", ')
    assert refused.value.code == "invalid_json"


@pytest.mark.parametrize("api", ["openai.chat", "ollama.chat", "anthropic.messages", "openai.responses"])
def test_a_lone_surrogate_escape_is_named_not_called_truncated(api: str) -> None:
    """msgspec refuses a string escaping half a surrogate pair saying "Input data was truncated"; every door says
    what it is (a body truly cut short still says truncated)."""
    whole = b'{"model": "m", "max_tokens": 5, "input": "x", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    with pytest.raises(BadRequest) as refused:
        read_request(api, whole)
    assert refused.value.code == "invalid_json" and "surrogate" in refused.value.message
    with pytest.raises(BadRequest) as cut:
        read_request(api, whole[:-30] + b'\\ud83d\\ude00')
    assert cut.value.message == "Malformed JSON in request body: Input data was truncated"


def test_the_ask_says_what_output_and_how_many_choices_a_call_wants() -> None:
    both = ask("openai.chat", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 90, '
                              b'"max_completion_tokens": 40, "n": 3}')
    assert (both.output, both.choices, both.embedding, both.field) == (40, 3, False, "max_completion_tokens")
    best = ask("openai.completions", b'{"model": "m", "prompt": ["a", "b"], "n": 2, "best_of": 5}')
    assert (best.output, best.choices) == (None, 10)           # best_of 5 for each of the two prompts
    endless = ask("ollama.chat", b'{"model": "m", "messages": [], "options": {"num_predict": -1}}')
    assert endless.output is None and endless.field == "options.num_predict"
    embed = ask("ollama.embed", b'{"model": "m", "input": ["a", "b"]}')
    assert embed.embedding and embed.output is None


def test_a_door_checks_its_own_required_count_by_its_own_name() -> None:
    with pytest.raises(BadRequest) as missing:
        check_tokens(None, "max_tokens", LIMIT, required=True)
    assert missing.value.param == "max_tokens" and missing.value.code == "missing_field"
    check_tokens(LIMIT, "max_tokens", LIMIT, required=True)


def test_the_ceiling_is_written_in_each_doors_own_field() -> None:
    chat = msgspec.json.encode({"model": "m", "messages": MESSAGES, "options": {"num_predict": 500, "top_k": 3}})
    native = msgspec.json.decode(ollama_set_model(chat, "m", 40))
    assert native["options"] == {"num_predict": 40, "top_k": 3}
    smaller = msgspec.json.decode(ollama_set_model(chat, "m", 900))
    assert smaller["options"]["num_predict"] == 500, "a client asking for less keeps its own limit"
    endless = msgspec.json.encode({"model": "m", "messages": MESSAGES, "options": {"num_predict": -1}})
    assert msgspec.json.decode(ollama_set_model(endless, "m", 40))["options"]["num_predict"] == 40
    assert msgspec.json.decode(ollama_chat_to_openai(chat, "m", 40))["max_tokens"] == 40
    generate = msgspec.json.encode({"model": "m", "prompt": "x"})
    assert msgspec.json.decode(ollama_generate_request(generate, "m", 7)[1])["max_tokens"] == 7
    assert "max_tokens" not in msgspec.json.decode(ollama_embed_to_openai(
        msgspec.json.encode({"model": "m", "input": "x"}), "m", 7))


@pytest.mark.parametrize(("fields", "kind", "written"), [
    ({"max_tokens": 500}, "openai-compatible", {"max_tokens": 40}),
    ({"max_completion_tokens": 500}, "openai-compatible", {"max_completion_tokens": 40}),
    ({"max_tokens": 500, "max_completion_tokens": 600}, "openai", {"max_tokens": 40, "max_completion_tokens": 40}),
    ({}, "openai-compatible", {"max_tokens": 40}),
    ({}, "ollama", {"max_tokens": 40}),
    ({}, "openai", {"max_completion_tokens": 40}),
])
def test_openai_calls_carry_the_ceiling_in_the_field_they_used(fields: dict, kind: str, written: dict) -> None:
    from switchyard_gateway.services.gateway.pipeline.upstream import upstream_body

    raw = msgspec.json.encode({"model": "m", "messages": MESSAGES, **fields})
    sent = msgspec.json.decode(upstream_body(raw, read_request("openai.chat", raw), "m", 40, kind))
    assert {k: sent[k] for k in ("max_tokens", "max_completion_tokens") if k in sent} == written
    assert upstream_body(raw, read_request("openai.chat", raw), "m", None, kind) is raw


TOOLS = [{"type": "function", "function": {
    "name": "book_freight", "description": "Book a freight slot on the line " * 40,
    "parameters": {"type": "object", "properties": {"yard": {"type": "string", "description": "which yard " * 30}}}}}]
SCHEMA = {"type": "object", "properties": {"track": {"type": "integer", "description": "the track number " * 30}}}
CALL = {"function": {"name": "book_freight", "arguments": {"yard": "north " * 50}}}


def _prompt(api: str, **fields: Any) -> int:
    return ask(api, msgspec.json.encode({**BASE[api], **fields})).prompt_tokens()


@pytest.mark.parametrize(("api", "fields", "text"), [
    ("openai.chat", {"tools": TOOLS}, msgspec.json.encode(TOOLS).decode()),
    ("openai.chat", {"response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}}},
     msgspec.json.encode(SCHEMA).decode()),
    ("openai.chat", {"messages": [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "book_freight",
                                                      "arguments": msgspec.json.encode(CALL["function"]["arguments"]).decode()}}]}]},
     "north " * 50),
    ("ollama.chat", {"tools": TOOLS}, msgspec.json.encode(TOOLS).decode()),
    ("ollama.chat", {"format": SCHEMA}, msgspec.json.encode(SCHEMA).decode()),
    ("ollama.chat", {"messages": [*MESSAGES, {"role": "assistant", "tool_calls": [CALL]}]}, "north " * 50),
    ("ollama.generate", {"format": SCHEMA}, msgspec.json.encode(SCHEMA).decode()),
    ("ollama.generate", {"template": "{{ .System }} " + "rail " * 300}, "rail " * 300),
    ("openai.completions", {"suffix": "yard " * 300}, "yard " * 300),
])
def test_text_the_model_reads_beside_the_messages_counts_toward_the_prompt(api: str, fields: dict,
                                                                          text: str) -> None:
    """Tool definitions, tool calls and answer schemas are rendered into the model's prompt and billed as prompt
    tokens by every real server: left out of the reservation, they would let a caller's usage pass its limit."""
    assert _prompt(api, **fields) - _prompt(api) >= ESTIMATOR.count(text) * 0.9


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.org/yard.png", "detail": "high"}}


@pytest.mark.parametrize(("api", "fields", "images"), [
    ("openai.chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}, IMAGE]}]}, 1),
    ("openai.chat", {"messages": [{"role": "user", "content": [IMAGE, IMAGE]},
                                 {"role": "user", "content": [{"type": "text", "text": "hello there"}, IMAGE]}]}, 3),
    ("ollama.chat", {"messages": [{"role": "user", "content": "hello there", "images": ["aGk=", "aGk="]}]}, 2),
    ("ollama.generate", {"images": ["aGk="]}, 1),
])
@pytest.mark.parametrize("per_image", [1_600, 85, 0])
def test_each_image_is_held_as_the_configured_tokens(api: str, fields: dict, images: int, per_image: int) -> None:
    """Servers bill an image as prompt tokens; the gateway does not decode it and holds each as `image_tokens`
    (SWITCHYARD_IMAGE_TOKENS), whichever way the door sends it."""
    tokenizer = TokenEstimator(ESTIMATOR.encoding, image_tokens=per_image)
    with_images = read_request(api, msgspec.json.encode({**BASE[api], **fields})).ask(LIMIT, tokenizer)
    text_alone = read_request(api, msgspec.json.encode(BASE[api])).ask(LIMIT, tokenizer)
    assert with_images.prompt_tokens() - text_alone.prompt_tokens() == images * per_image + (
        3 * (len(fields["messages"]) - 1) if api == "openai.chat" else 0)


AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
FILE = {"type": "file", "file": {"filename": "timetable.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}


@pytest.mark.parametrize("part", [AUDIO, FILE, {"type": "file", "text": "a few words", "file": {"file_id": "f"}},
                                  {"type": "video_url", "video_url": {"url": "https://example.org/v.mp4"}}])
def test_a_part_that_cannot_be_counted_holds_the_whole_context(part: dict) -> None:
    """Audio and files are billed as prompt tokens the gateway cannot count without decoding them (a short PDF
    can bill many pages): the call is held at the most any server could bill for its prompt, the model's
    context, so no caller gets past a limit with one; a text beside the part does not lower it."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "hello there"}, part]}]
    asked = ask("openai.chat", msgspec.json.encode({**BASE["openai.chat"], "messages": messages}))
    assert asked.prompt_tokens() == LIMIT
    assert asked.counted_tokens() == _prompt("openai.chat") < 50     # an estimate takes what could be counted


def test_a_refusal_read_back_counts_as_prompt_text() -> None:
    refusal = "I cannot route that train " * 40
    messages = [*MESSAGES, {"role": "assistant", "content": [{"type": "refusal", "refusal": refusal}]}]
    assert _prompt("openai.chat", messages=messages) - _prompt("openai.chat") >= ESTIMATOR.count(refusal) * 0.9


@pytest.mark.parametrize(("prompt", "prompts"), [
    ("one text", 1), ([1, 2, 3], 1), (["a", "b", "c"], 3), ([[1, 2], [3], [4, 5, 6]], 3), ([[1, 2]] * 400, 400),
])
def test_each_prompt_of_a_completions_list_is_held_as_its_own_choices(prompt: Any, prompts: int) -> None:
    """OpenAI and every compatible server answer each prompt of a list with its own `n` choices of up to
    `max_tokens` each: holding the output of one would let a list of 400 prompts settle 400 times the hold."""
    call = ask("openai.completions", msgspec.json.encode({"model": "m", "prompt": prompt, "max_tokens": 50, "n": 2}))
    assert (call.output, call.choices) == (50, 2 * prompts)
    suffixed = ask("openai.completions", msgspec.json.encode({"model": "m", "prompt": prompt, "suffix": "tail " * 40}))
    assert suffixed.prompt_tokens() - call.prompt_tokens() >= prompts * ESTIMATOR.count("tail " * 40) * 0.9


@pytest.mark.parametrize(("api", "field", "value"), [
    ("openai.completions", "prompt", []), ("openai.completions", "prompt", ["a", [1, 2], 3]),
    ("openai.completions", "prompt", ["a", 1]), ("openai.completions", "prompt", [[1], []]),
    ("openai.embeddings", "input", [[]]), ("openai.embeddings", "input", ["", "a"]),
    ("openai.embeddings", "input", ["a", [1]]),
])
def test_a_malformed_prompt_list_is_refused_naming_its_field(api: str, field: str, value: Any) -> None:
    """A list mixing texts, token ids and token arrays, or holding an empty one, is a 400 (OpenAI's answer), not
    a body passed on for the upstream to fail with a 500 counted against its breaker."""
    with pytest.raises(BadRequest) as refused:
        ask(api, body(api, field, value))
    assert refused.value.param == field and refused.value.status == 400


def test_best_of_cannot_stream() -> None:
    with pytest.raises(BadRequest) as refused:
        ask("openai.completions", b'{"model": "m", "prompt": "a", "best_of": 2, "stream": true}')
    assert refused.value.param == "best_of"
    assert ask("openai.completions", b'{"model": "m", "prompt": "a", "best_of": 1, "stream": true}').choices == 1


def test_the_older_ollama_embeddings_route_counts_and_sends_what_ollama_embeds_its_prompt() -> None:
    """/api/embeddings embeds `prompt` and ignores `input`: a large prompt beside a one-letter input is held, and
    sent, as the prompt it is."""
    raw = msgspec.json.encode({"model": "m", "prompt": "word " * 2000, "input": "a"})
    assert ask("ollama.embeddings", raw).prompt_tokens() >= 2000
    assert msgspec.json.decode(ollama_embeddings_to_openai(raw, "up"))["input"] == "word " * 2000
    assert msgspec.json.decode(ollama_embed_to_openai(raw, "up"))["input"] == "a"      # /api/embed reads `input`


@pytest.mark.parametrize(("api", "extra", "param"), [
    ("openai.chat", {"MAX_TOKENS": 100_000}, "MAX_TOKENS"),
    ("openai.chat", {"Model": "another-model"}, "Model"),
    ("openai.chat", {"messages": [{"role": "user", "content": "hi", "Content": "word " * 1000}]},
     "messages[0].Content"),
    ("openai.completions", {"Prompt": "word " * 1000}, "Prompt"),
    ("ollama.chat", {"Options": {"num_predict": 100_000}}, "Options"),
    ("ollama.chat", {"messages": [{"role": "user", "content": "hi", "IMAGES": ["aGk="]}]}, "messages[0].IMAGES"),
    ("ollama.generate", {"meſsages": [], "ſystem": "word " * 1000}, "ſystem"),       # ſ folds to s, as in Go
    ("ollama.embeddings", {"PROMPT": "word " * 1000}, "PROMPT"),
])
def test_a_field_spelled_in_other_letter_case_is_refused(api: str, extra: dict, param: str) -> None:
    """Ollama's server matches JSON keys to its fields whatever their case, the later one winning: a body with
    `MAX_TOKENS` or `Model` beside what the gateway read would be served there past the reservation's ceiling or
    as another model than the one allowed. Such a key is a 400 naming it."""
    with pytest.raises(BadRequest) as refused:
        ask(api, msgspec.json.encode({**BASE[api], **extra}))
    assert refused.value.param == param and refused.value.code == "invalid_field"


def test_keys_the_gateway_does_not_read_keep_their_case() -> None:
    """Vendors' own fields (`Top_K` of some server) pass untouched; only case variants of read fields are refused."""
    call = ask("openai.chat", msgspec.json.encode({**BASE["openai.chat"], "Top_K": 5, "User": "u-1",
                                                   "messages": [{"role": "user", "content": "hi", "Extra": 1}]}))
    assert call.choices == 1


@pytest.mark.parametrize("value", ["xml", 123, [1], True, {"type": "object"}, "json", None, ""])
@pytest.mark.parametrize("api", ["ollama.chat", "ollama.generate"])
def test_ollama_format_is_json_or_a_schema(api: str, value: Any) -> None:
    """Ollama answers 400 to a `format` other than "json" or a schema; translated, any such value became JSON
    mode. It is a 400 naming `format` before anything is held."""
    raw = msgspec.json.encode({**BASE[api], "format": value})
    if value in ("xml", 123, [1], True):
        with pytest.raises(BadRequest) as refused:
            ask(api, raw)
        assert refused.value.param == "format"
    else:
        assert ask(api, raw).choices == 1



@pytest.mark.parametrize(("image_url", "refused"), [
    ({"url": "file:///etc/passwd"}, True), ({"url": "ftp://h/x.png"}, True), ("file:///etc/shadow", True),
    ({}, True), ({"url": "https://example.org/x.png"}, False), ({"url": "data:image/png;base64,aGk="}, False),
    ("http://example.org/x.png", False),
])
def test_an_image_is_an_http_or_data_url(image_url: Any, refused: bool) -> None:
    """The upstream fetches an image URL: a file:// one would have it read its own disk (vLLM with local media
    allowed, any server that opens what it is given)."""
    raw = msgspec.json.encode({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": image_url}]}]})
    if refused:
        with pytest.raises(BadRequest) as caught:
            ask("openai.chat", raw)
        assert caught.value.param == "messages[0].content[1].image_url.url"
    else:
        assert ask("openai.chat", raw).choices == 1
