"""Write a tiny llama-architecture GGUF model that llama.cpp's `llama-server` loads and answers with.

Random weights, two layers of width 64, a SentencePiece-style vocabulary (control tokens, the 256
byte tokens, a few hundred word pieces) and a ChatML chat template. One residual dimension is held
constant through every layer (embeddings set it, no layer writes it), which lets the output layer
give end-of-sequence a large negative logit whatever the context: answers never stop early, so every
one runs exactly to `max_tokens`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WIDTH = 64
LAYERS = 2
HEADS = 4
CONTEXT = 512
FEED_FORWARD = 128
UNK, BOS, EOS = 0, 1, 2
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_WORDS = ("the and to of a in is it you that he was for on are with as his they be at one have this from or had by "
          "hot word but what some we can out other were all there when up use your how said an each she which do "
          "their time if will way about many then them write would like so these her long make thing see him two "
          "has look more day could go come did number sound no most people my over know water than call first who "
          "may down side been now find hello switch yard gate model token count stream").split()
_PIECES = ("▁", *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()",
           *(f"▁{word}" for word in _WORDS))
_CONSTANT = 1.0          # the value of the residual dimension no layer writes
_EOS_PENALTY = -100.0    # its weight towards end-of-sequence: a logit of about -800 after the final norm


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """(pieces, scores, token types) in SentencePiece order: <unk>, <s>, </s>, <0x00>..<0xFF>, then word pieces."""
    import gguf

    kinds = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [kinds.UNKNOWN, kinds.CONTROL, kinds.CONTROL, *([kinds.BYTE] * 256)]
    scores = [0.0] * len(tokens)
    for piece in dict.fromkeys(_PIECES):
        tokens.append(piece)
        types.append(kinds.NORMAL)
        scores.append(-1.0 / len(piece))      # longer pieces first, as SentencePiece scores them
    return tokens, scores, [int(t) for t in types]


def write_tiny_model(path: Path, seed: int = 13) -> Path:
    """Write the model to `path` (deterministic for a seed) and return the path."""
    import gguf

    tokens, scores, types = vocabulary()
    rng = np.random.default_rng(seed)

    def weights(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name("switchyard tiny test model")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(WIDTH // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    names = gguf.TENSOR_NAMES
    T = gguf.MODEL_TENSOR
    embeddings = weights(len(tokens), WIDTH)
    embeddings[:, 0] = _CONSTANT
    output = weights(len(tokens), WIDTH, scale=0.5)
    output[:, 0] = 0.0
    output[EOS] = 0.0
    output[EOS, 0] = _EOS_PENALTY
    writer.add_tensor(names[T.TOKEN_EMBD] + ".weight", embeddings)
    writer.add_tensor(names[T.OUTPUT_NORM] + ".weight", np.ones(WIDTH, dtype=np.float32))
    writer.add_tensor(names[T.OUTPUT] + ".weight", output)
    for block in range(LAYERS):
        def name(tensor: gguf.MODEL_TENSOR) -> str:
            return names[tensor].format(bid=block) + ".weight"

        attn_out, ffn_down = weights(WIDTH, WIDTH), weights(WIDTH, FEED_FORWARD)
        attn_out[0] = 0.0                     # no layer writes the constant dimension
        ffn_down[0] = 0.0
        writer.add_tensor(name(T.ATTN_NORM), np.ones(WIDTH, dtype=np.float32))
        writer.add_tensor(name(T.ATTN_Q), weights(WIDTH, WIDTH))
        writer.add_tensor(name(T.ATTN_K), weights(WIDTH, WIDTH))
        writer.add_tensor(name(T.ATTN_V), weights(WIDTH, WIDTH))
        writer.add_tensor(name(T.ATTN_OUT), attn_out)
        writer.add_tensor(name(T.FFN_NORM), np.ones(WIDTH, dtype=np.float32))
        writer.add_tensor(name(T.FFN_GATE), weights(FEED_FORWARD, WIDTH))
        writer.add_tensor(name(T.FFN_UP), weights(FEED_FORWARD, WIDTH))
        writer.add_tensor(name(T.FFN_DOWN), ffn_down)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":
    import sys

    print(write_tiny_model(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny.gguf")))
