"""A tiny llama-architecture text model (GGUF) written with the `gguf` package, with the attention
shape a test asks for: heads of any size (20 values, not a multiple of a vector's 8 or 16) and any
number of query heads per KV head. Its weights are random, so its words mean nothing, but
llama.cpp loads it and computes with it as with any model: a way to reach the attention kernel's
paths that SmolLM2's shape (9 heads of 64 over 3 KV heads) never takes. Its layers' matrices are
F32, or quantised to Q4_1 (as SmolLM2's are) for the tests of the weights' kernels. Written in
milliseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import gguf
import numpy as np

VOCAB = 96  # three special tokens, then single characters
Weights = Literal["f32", "q4_1"]


def write_tiny_llama(
    path: Path, *, head_dim: int, heads: int, kv_heads: int, layers: int = 2, weights: Weights = "f32"
) -> Path:
    """`weights`: "f32", or "q4_1" for the layers' matrices (whose rows then hold whole blocks of 32)."""
    n_embd, n_ff = head_dim * heads, 2 * head_dim * heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(1024)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>"] + [chr(33 + i) for i in range(VOCAB - 3)]
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * VOCAB)
    writer.add_token_types(
        [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (VOCAB - 3)
    )
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    rng = np.random.default_rng(0)

    def tensor(name: str, *shape: int, scale: float = 0.3) -> None:
        values = (rng.standard_normal(shape) * scale / np.sqrt(shape[-1])).astype(np.float32)
        if weights == "q4_1" and name.startswith("blk."):
            q4_1 = gguf.GGMLQuantizationType.Q4_1
            writer.add_tensor(name, gguf.quants.quantize(values, q4_1), raw_dtype=q4_1)
        else:
            writer.add_tensor(name, values)

    tensor("token_embd.weight", VOCAB, n_embd, scale=1.0 * np.sqrt(n_embd))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    tensor("output.weight", VOCAB, n_embd)
    for layer in range(layers):
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(n_embd, np.float32))
        writer.add_tensor(f"blk.{layer}.ffn_norm.weight", np.ones(n_embd, np.float32))
        # Queries and keys large enough that attention is far from uniform.
        tensor(f"blk.{layer}.attn_q.weight", heads * head_dim, n_embd, scale=3.0)
        tensor(f"blk.{layer}.attn_k.weight", kv_heads * head_dim, n_embd, scale=3.0)
        tensor(f"blk.{layer}.attn_v.weight", kv_heads * head_dim, n_embd, scale=1.0)
        tensor(f"blk.{layer}.attn_output.weight", n_embd, heads * head_dim)
        tensor(f"blk.{layer}.ffn_gate.weight", n_ff, n_embd)
        tensor(f"blk.{layer}.ffn_up.weight", n_ff, n_embd)
        tensor(f"blk.{layer}.ffn_down.weight", n_embd, n_ff)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
