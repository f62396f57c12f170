"""A tiny vision projector (mmproj GGUF) written with the `gguf` package: a one-block CLIP encoder
for 32x32 images (16 patches) and llava's two-layer MLP into the text model's embedding size.
Its weights are random, so what it "sees" means nothing, but it is a real projector: llama.cpp's
multimodal library loads it, preprocesses and encodes images with it, and different images give
the text model different embeddings. 140 KB, written in milliseconds."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

IMAGE_SIZE = 32
PATCH_SIZE = 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # one embedding per patch
_HIDDEN = 32
_FFN = 64


def write_tiny_projector(path: Path, *, text_n_embd: int) -> Path:
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.use_gelu", True)
    for key, value in {
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "embedding_length": _HIDDEN,
        "feed_forward_length": _FFN,
        "projection_dim": text_n_embd,
        "block_count": 1,
        "attention.head_count": 2,
    }.items():
        writer.add_uint32(f"clip.vision.{key}", value)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    # LLaVA takes the penultimate layer's output unless told which: with one block, the block's.
    writer.add_array("clip.vision.feature_layer", [1])
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    rng = np.random.default_rng(0)

    def tensor(name: str, *shape: int, scale: float = 0.02) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    tensor("v.patch_embd.weight", _HIDDEN, 3, PATCH_SIZE, PATCH_SIZE)
    tensor("v.position_embd.weight", IMAGE_TOKENS, _HIDDEN)
    for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
        tensor(f"v.blk.0.{name}.weight", _HIDDEN, _HIDDEN)
        tensor(f"v.blk.0.{name}.bias", _HIDDEN)
    for name in ("ln1", "ln2"):
        writer.add_tensor(f"v.blk.0.{name}.weight", np.ones(_HIDDEN, np.float32))
        tensor(f"v.blk.0.{name}.bias", _HIDDEN)
    tensor("v.blk.0.ffn_up.weight", _FFN, _HIDDEN)
    tensor("v.blk.0.ffn_up.bias", _FFN)
    tensor("v.blk.0.ffn_down.weight", _HIDDEN, _FFN)
    tensor("v.blk.0.ffn_down.bias", _HIDDEN)
    # Large enough that an image moves the text model's answer (the encoder's output is normalised).
    tensor("mm.0.weight", _HIDDEN, _HIDDEN, scale=1.0)
    tensor("mm.0.bias", _HIDDEN)
    tensor("mm.2.weight", text_n_embd, _HIDDEN, scale=0.2)
    tensor("mm.2.bias", text_n_embd)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
