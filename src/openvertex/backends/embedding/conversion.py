"""A sentence-transformers BERT model (safetensors, tokenizer.json, pooling config) as the GGUF file
llama.cpp's embedding mode reads, written with llama.cpp's own GGUF writer (`gguf`).

The layout is what llama.cpp's `convert_hf_to_gguf.py` writes for `BertModel` (checked tensor by
tensor and over the whole vocabulary against it), without the torch and transformers that script
needs. Weights stay float32: f16 is no faster here and moves the vectors further from the model's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import load_file

# Hugging Face BERT tensor names → llama.cpp's.
_TOP = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}
_LAYER = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
_SKIPPED = ("embeddings.position_ids", "pooler.")


class ConversionError(ValueError):
    """The folder is not a model this converter reads."""


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConversionError(f"cannot read {path.name}: {error}") from None


def _pooling(folder: Path) -> gguf.PoolingType:
    pooling = _json(folder / "1_Pooling" / "config.json")
    if pooling.get("pooling_mode_mean_tokens"):
        return gguf.PoolingType.MEAN
    if pooling.get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    raise ConversionError("only mean or CLS pooling is supported")


def _tensor_name(name: str) -> str | None:
    name = name.removeprefix("bert.")
    if name.startswith(_SKIPPED):
        return None
    if name in _TOP:
        return _TOP[name]
    parts = name.split(".")  # encoder.layer.N.<module…>.(weight|bias)
    module = ".".join(parts[3:-1])
    if parts[:2] != ["encoder", "layer"] or module not in _LAYER:
        raise ConversionError(f"unexpected tensor {name}")
    return f"blk.{parts[2]}.{_LAYER[module]}.{parts[-1]}"


def _write_model(writer: gguf.GGUFWriter, folder: Path, config: dict[str, Any]) -> None:
    writer.add_name(folder.name)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_causal_attention(False)
    writer.add_pooling_type(_pooling(folder))
    writer.add_token_type_count(config.get("type_vocab_size", 1))


def _write_vocabulary(writer: gguf.GGUFWriter, tokenizer: dict[str, Any]) -> None:
    """WordPiece as llama.cpp's BERT tokenizer reads it: a word start marked with ▁, `##` dropped."""
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    added = {token["content"]: token["id"] for token in tokenizer.get("added_tokens", [])}
    special = {token["id"] for token in tokenizer.get("added_tokens", []) if token.get("special")}
    tokens = [""] * len(vocab)
    for token, token_id in vocab.items():
        tokens[token_id] = token
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    tokens = [t if i in special else (t[2:] if t.startswith("##") else "\u2581" + t) for i, t in enumerate(tokens)]
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("jina-v2-en")  # BERT's pre-tokeniser: split on whitespace and punctuation
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_bos_token_id(added["[CLS]"])
    writer.add_eos_token_id(added["[SEP]"])
    writer.add_unk_token_id(added["[UNK]"])
    writer.add_sep_token_id(added["[SEP]"])
    writer.add_pad_token_id(added["[PAD]"])
    writer.add_mask_token_id(added["[MASK]"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    lowercase = bool((tokenizer.get("normalizer") or {}).get("lowercase", True))
    writer.add_bool("tokenizer.ggml.normalizer.lowercase", lowercase)


def convert(folder: Path, target: Path) -> None:
    """Write `folder`'s model to `target` (atomically: a reader never sees half a file)."""
    config = _json(folder / "config.json")
    if config.get("model_type") != "bert":
        raise ConversionError(f"a BERT model is needed, not {config.get('model_type')!r}")
    tokenizer = _json(folder / "tokenizer.json")
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(scratch), "bert")
    try:
        _write_model(writer, folder, config)
        _write_vocabulary(writer, tokenizer)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, array in load_file(str(folder / "model.safetensors")).items():
            renamed = _tensor_name(name)
            if renamed is not None:
                writer.add_tensor(renamed, np.ascontiguousarray(array, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(scratch, target)
    except (KeyError, TypeError) as error:
        raise ConversionError(f"unexpected model files: {error!r}") from None
    finally:
        writer.close()
        scratch.unlink(missing_ok=True)
