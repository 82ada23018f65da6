"""The simulator's pure parts: token counts, deterministic replies and embeddings, failure draws."""

import base64
import math
import struct

from switchyard_gateway.simulator import synth
from switchyard_gateway.simulator.faults import fails


def test_prompt_tokens_are_whitespace_words_with_a_minimum_of_one():
    assert synth.count_tokens("hello there  general\nkenobi") == 4
    assert synth.count_tokens("") == 1
    assert synth.count_tokens("   ") == 1


def test_completion_tokens_are_capped_by_the_requested_maximum():
    assert synth.completion_tokens(16, None) == 16
    assert synth.completion_tokens(16, 4) == 4
    assert synth.completion_tokens(16, 100) == 16
    assert synth.completion_tokens(16, 0) == 0


def test_same_model_and_prompt_give_the_same_reply():
    assert synth.reply_tokens("llama3.2", "hi", 8) == synth.reply_tokens("llama3.2", "hi", 8)
    assert synth.reply_text("llama3.2", "hi", 8) == "".join(synth.reply_tokens("llama3.2", "hi", 8))


def test_reply_differs_by_model_and_by_prompt():
    base = synth.reply_text("llama3.2", "hi", 16)
    assert synth.reply_text("mistral", "hi", 16) != base
    assert synth.reply_text("llama3.2", "hello", 16) != base


def test_reply_has_exactly_n_tokens_reading_as_a_sentence():
    tokens = synth.reply_tokens("llama3.2", "count me", 5)
    assert len(tokens) == 5
    assert tokens[0][0].isupper()
    assert all(t.startswith(" ") for t in tokens[1:])
    assert tokens[-1].endswith(".")
    assert synth.reply_tokens("llama3.2", "count me", 0) == ()


def test_embedding_is_unit_length_and_deterministic():
    vector = synth.embed("nomic-embed-text", "a yard", 768)
    assert len(vector.values) == 768
    assert math.isclose(math.fsum(v * v for v in vector.values), 1.0, rel_tol=1e-5)
    assert synth.embed("nomic-embed-text", "a yard", 768).values == vector.values
    assert synth.embed("nomic-embed-text", "another yard", 768).values != vector.values


def test_embedding_base64_is_the_same_values_as_little_endian_float32():
    vector = synth.embed("nomic-embed-text", "bytes", 16)
    decoded = struct.unpack("<16f", base64.b64decode(vector.base64()))
    assert list(decoded) == vector.values


def test_failure_rate_zero_never_fails_and_one_always_fails():
    assert not any(fails(3, n, 0.0) for n in range(1, 500))
    assert all(fails(3, n, 1.0) for n in range(1, 500))


def test_failure_draws_repeat_for_a_seed_and_match_the_rate():
    first = [fails(7, n, 0.3) for n in range(1, 2001)]
    assert first == [fails(7, n, 0.3) for n in range(1, 2001)]
    assert first != [fails(8, n, 0.3) for n in range(1, 2001)]
    assert 0.25 < sum(first) / len(first) < 0.35
