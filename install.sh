#!/usr/bin/env bash
# Installs openvertex with its test tools into .venv (Python 3.11+). llama-cpp-python is
# compiled from source once (about 5 minutes on 2 cores) and the wheel is kept in
# ~/.cache/openvertex, keyed by version and build flags, for the next install.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
LLAMA_CPP_VERSION=0.3.36
# llamafile's sgemm picks its tiling from the batch shape, so a sequence's numbers would
# depend on what else shares the batch; without it every sequence decodes exactly as it
# would alone (seeded requests stay reproducible under load).
# -march=native turns on every ISA extension the CPU reports. Some virtual machines report
# AMX but fault on its tile instructions (SIGILL in llama.cpp's AMX matmul), so on x86-64
# AMX is left out; it only speeds up large int8 batches on Sapphire Rapids and later.
CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_LLAMAFILE=OFF"}
if [ "$(uname -m)" = "x86_64" ] && [ "$CMAKE_ARGS" = "-DGGML_LLAMAFILE=OFF" ]; then
  no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  CMAKE_ARGS="$CMAKE_ARGS -DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'"
fi
export CMAKE_ARGS

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip

# patches/*.patch, applied in name order to the vendored llama.cpp:
# - llama.cpp-attention.patch: flash attention's reference mode (which openvertex uses for seeded
#   answers that do not depend on the batch) runs llama.cpp's tiled kernel for every row, so
#   prompts prefill as fast as with the shape-chosen kernels;
# - llama.cpp-q4_1-repack.patch: Q4_1 weights (the default model's) are repacked for the CPU as
#   llama.cpp repacks Q4_0, 8 rows at a time, with every row's numbers independent of the batch.
PATCHES=(patches/*.patch)
key=$(printf '%s|%s|%s|%s' "$LLAMA_CPP_VERSION" "$CMAKE_ARGS" "$(uname -m)" "$(cat "${PATCHES[@]}" | sha256sum)" | sha256sum | cut -c1-16)
wheels="${XDG_CACHE_HOME:-$HOME/.cache}/openvertex/wheels/$key"
if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_CPP_VERSION (CMAKE_ARGS=$CMAKE_ARGS); this takes a few minutes"
  source=$(mktemp -d)
  trap 'rm -rf "$source"' EXIT
  .venv/bin/python -m pip download --quiet --no-deps --no-binary llama-cpp-python -d "$source" "llama-cpp-python==$LLAMA_CPP_VERSION"
  tar -xzf "$source"/llama_cpp_python-"$LLAMA_CPP_VERSION".tar.gz -C "$source"
  for patch in "${PATCHES[@]}"; do
    patch --quiet --fuzz=0 -p1 -d "$source/llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp" < "$patch"
  done
  .venv/bin/python -m pip wheel --quiet --no-deps --no-cache-dir -w "$wheels" "$source/llama_cpp_python-$LLAMA_CPP_VERSION"
fi
# Always this wheel, even over one already installed with other build flags.
.venv/bin/python -m pip install --quiet --no-deps --force-reinstall "$wheels"/llama_cpp_python-*.whl
.venv/bin/python -m pip install --quiet --find-links "$wheels" -e ".[test]"
echo "installed: .venv/bin/openvertex"
