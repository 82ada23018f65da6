"""The tiny model file is what the real-model tests rely on: llama architecture, its sizes, a SentencePiece
vocabulary with the control and byte tokens, a chat template, and an output layer that never picks
end-of-sequence. Read back with the `gguf` package's own reader; no llama-server needed."""

from __future__ import annotations


import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="the gguf package is missing: pip install -e '.[test]'")

from tests.realmodel.tiny_gguf import EOS, write_tiny_model  # noqa: E402

K = gguf.Keys


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> gguf.GGUFReader:
    return gguf.GGUFReader(write_tiny_model(tmp_path_factory.mktemp("gguf") / "tiny.gguf"))


def value(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_the_model_is_a_two_layer_llama_of_width_64_with_4_heads_and_a_512_context(reader) -> None:
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
    assert value(reader, K.General.ARCHITECTURE) == arch
    sizes = (K.LLM.BLOCK_COUNT, K.LLM.EMBEDDING_LENGTH, K.Attention.HEAD_COUNT, K.LLM.CONTEXT_LENGTH)
    assert [value(reader, key.format(arch=arch)) for key in sizes] == [2, 64, 4, 512]
    assert {t.name for t in reader.tensors} >= {"token_embd.weight", "output.weight", "blk.1.ffn_down.weight"}


def test_the_vocabulary_is_sentencepiece_with_control_and_byte_tokens_and_a_chat_template(reader) -> None:
    tokens = value(reader, K.Tokenizer.LIST)
    assert value(reader, K.Tokenizer.MODEL) == "llama" and 300 <= len(tokens) <= 600
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and value(reader, K.Tokenizer.EOS_ID) == EOS
    assert tokens[3:259] == [f"<0x{b:02X}>" for b in range(256)]
    assert "▁hello" in tokens and "{% for message in messages %}" in value(reader, K.Tokenizer.CHAT_TEMPLATE)


def test_end_of_sequence_loses_to_every_token_while_the_constant_dimension_holds(reader) -> None:
    weights = {t.name: np.array(t.data) for t in reader.tensors}
    embeddings, output = weights["token_embd.weight"], weights["output.weight"]
    assert (embeddings[:, 0] == 1.0).all()                               # every token sets the constant dimension...
    for block in (0, 1):                                                 # ...and no layer writes it
        assert not weights[f"blk.{block}.attn_output.weight"][0].any()
        assert not weights[f"blk.{block}.ffn_down.weight"][0].any()
    # final states: the constant 1.0, and the other 63 dimensions as large as it on average (far more than two
    # layers of weights at scale 0.08 add), RMS-normalised as the output norm does
    states = np.random.default_rng(1).standard_normal((2000, 64))
    states[:, 0] = 1.0
    states /= np.sqrt((states ** 2).mean(axis=1, keepdims=True))
    logits = states @ output.T
    assert (logits[:, EOS] < np.delete(logits, EOS, axis=1).max(axis=1) - 20).all()
