"""The Anthropic door's `document` blocks: plain text sent on as text, PDFs, URLs, files and citations refused."""

from __future__ import annotations

import json

import pytest

from switchyard_gateway.services.gateway.edge.errors import BadRequest
from switchyard_gateway.services.gateway.translate.anthropic_door import MESSAGES, count_input_tokens, read_request
from switchyard_gateway.services.gateway.translate.anthropic_requests import ollama_chat_body, openai_chat_body

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
TEXT_DOCUMENT = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "The cat sat."},
                 "title": "Notes", "context": "Written on Monday."}


def asking(*blocks: dict, role: str = "user") -> bytes:
    content = [{"type": "text", "text": "Summarise this."}, *blocks]
    return json.dumps({"model": "m", "max_tokens": 64, "messages": [{"role": role, "content": content}]}).encode()


def test_a_plain_text_document_is_sent_on_as_text_after_its_title_and_context() -> None:
    """pydantic-ai sends a text/plain attachment, and langchain-anthropic a text file block, this way; every such
    call was a 400 on `messages[0].content[1].type`."""
    request = read_request(MESSAGES, asking(TEXT_DOCUMENT))
    openai = json.loads(openai_chat_body(request, "up", top_k=True))
    assert openai["messages"] == [{"role": "user",
                                   "content": "Summarise this.\nNotes\n\nWritten on Monday.\n\nThe cat sat."}]
    ollama = json.loads(ollama_chat_body(request, "up"))
    assert ollama["messages"] == openai["messages"]


def test_a_content_source_sends_its_text_and_its_images() -> None:
    document = {"type": "document", "source": {"type": "content", "content": [
        {"type": "text", "text": "Page one."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "Page two."}]}}
    request = read_request(MESSAGES, asking(document))
    openai = json.loads(openai_chat_body(request, "up", top_k=True))
    assert openai["messages"][0]["content"] == [
        {"type": "text", "text": "Summarise this."}, {"type": "text", "text": "Page one.\nPage two."},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]
    ollama = json.loads(ollama_chat_body(request, "up"))
    assert ollama["messages"] == [{"role": "user", "content": "Summarise this.\nPage one.\nPage two.", "images": [PNG]}]
    plain = read_request(MESSAGES, asking({"type": "document", "source": {"type": "content", "content": "Just text."}}))
    assert json.loads(openai_chat_body(plain, "up", top_k=True))["messages"][0]["content"] == \
        "Summarise this.\nJust text."


def test_a_document_is_counted_as_the_text_it_is_sent_as() -> None:
    with_document = read_request(MESSAGES, asking(TEXT_DOCUMENT))
    without = read_request(MESSAGES, asking())
    words = len("Notes\n\nWritten on Monday.\n\nThe cat sat.".split())
    assert count_input_tokens(with_document, lambda text: len(text.split())) == \
        count_input_tokens(without, lambda text: len(text.split())) + words


@pytest.mark.parametrize(("block", "role", "needle"), [
    ({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}, "user",
     "messages.0.content.1.source: PDF documents are not served"),
    ({"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}, "user",
     "messages.0.content.1.source: documents by URL are not served"),
    ({"type": "document", "source": {"type": "file", "file_id": "file_1"}}, "user",
     "messages.0.content.1.source: `file` sources are not served"),
    ({**TEXT_DOCUMENT, "citations": {"enabled": True}}, "user", "messages.0.content.1.citations"),
    ({"type": "document", "source": {"type": "text", "media_type": "text/html", "data": "<b>x</b>"}}, "user",
     "messages[0].content[1].source.media_type"),
    ({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": " "}}, "user",
     "messages.0.content.1.source.data: text content blocks must contain non-whitespace text"),
    ({"type": "document", "source": {"type": "content", "content": []}}, "user",
     "messages.0.content.1.source.content: a document must have non-empty content"),
    ({"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": ""}]}}, "user",
     "messages.0.content.1.source.content.0: text content blocks must be non-empty"),
    ({"type": "document"}, "user", "messages[0].content[1].source"),
    (TEXT_DOCUMENT, "assistant", "document blocks may only be in user messages"),
])
def test_a_document_that_cannot_be_sent_on_as_text_is_refused_naming_the_field(block: dict, role: str,
                                                                               needle: str) -> None:
    with pytest.raises(BadRequest) as refused:
        read_request(MESSAGES, asking(block, role=role) if role == "user" else json.dumps({
            "model": "m", "max_tokens": 64, "messages": [
                {"role": "user", "content": "hi"}, {"role": role, "content": [block]}]}).encode())
    assert needle in str(refused.value)


def tool_round_trip(*result: dict) -> bytes:
    return json.dumps({"model": "m", "max_tokens": 64, "messages": [
        {"role": "user", "content": "Read a.txt"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "read_file",
                                           "input": {"path": "a.txt"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": list(result)}]},
    ]}).encode()


def test_a_document_a_tool_returns_is_its_results_text() -> None:
    """pydantic-ai sends a tool's text/plain return value as a document inside the tool_result; every such call was a
    400 on `messages[2].content[0].content[0].type`."""
    document = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hello file"}}
    request = read_request(MESSAGES, tool_round_trip({"type": "text", "text": "a.txt:"}, document))
    openai = json.loads(openai_chat_body(request, "up", top_k=True))
    assert openai["messages"][-1] == {"role": "tool", "tool_call_id": "toolu_1", "content": "a.txt:\nhello file"}
    ollama = json.loads(ollama_chat_body(request, "up"))
    assert ollama["messages"][-1] == {"role": "tool", "content": "a.txt:\nhello file", "tool_name": "read_file"}
    without = read_request(MESSAGES, tool_round_trip({"type": "text", "text": "a.txt:"}))
    assert count_input_tokens(request, lambda text: len(text.split())) == \
        count_input_tokens(without, lambda text: len(text.split())) + 2


def test_a_pdf_a_tool_returns_is_refused_naming_the_field() -> None:
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
    with pytest.raises(BadRequest) as refused:
        read_request(MESSAGES, tool_round_trip(pdf))
    assert "messages.2.content.0.content.0.source: PDF documents are not served" in str(refused.value)
