# openvertex: the embedded model (SmolLM2 from PyPI), Gemini and self-deployed endpoints in one image.
#   docker build -t openvertex .
#   docker run -p 8080:8080 -e OPENVERTEX_API_KEYS=change-me -v openvertex:/var/lib/openvertex openvertex
# Also a Vertex AI custom prediction container: Vertex's AIP_* variables set the port and routes.

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
# llama.cpp for a portable CPU baseline, not the build machine's: no -march=native (on x86-64,
# ggml's defaults: AVX2, FMA and F16C, any CPU since 2013); no llamafile sgemm, whose tiling
# depends on the batch (seeded requests stay reproducible under load).
# Patched as install.sh patches it (patches/): flash attention's reference mode runs the tiled
# kernel for every row, and Q4_1 weights are repacked for the CPU.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_LLAMAFILE=OFF"
COPY patches/ /tmp/patches/
RUN python -m venv /opt/openvertex \
 && /opt/openvertex/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/openvertex/bin/pip download --no-cache-dir --no-deps --no-binary llama-cpp-python -d /tmp/llama "llama-cpp-python==0.3.36" \
 && tar -xzf /tmp/llama/llama_cpp_python-0.3.36.tar.gz -C /tmp/llama \
 && for patch in /tmp/patches/*.patch; do patch --fuzz=0 -p1 -d /tmp/llama/llama_cpp_python-0.3.36/vendor/llama.cpp < "$patch" || exit 1; done \
 && /opt/openvertex/bin/pip install --no-cache-dir /tmp/llama/llama_cpp_python-0.3.36 \
 && rm -rf /tmp/llama /tmp/patches
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/openvertex/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /var/lib/openvertex openvertex
COPY --from=build /opt/openvertex /opt/openvertex
ENV PATH=/opt/openvertex/bin:$PATH \
    OPENVERTEX_STATE_DIR=/var/lib/openvertex \
    OPENVERTEX_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
USER openvertex
VOLUME /var/lib/openvertex
EXPOSE 8080
# Ready once the models are loaded; on Vertex AI, its own health route and port (AIP_*).
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 CMD \
  python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"AIP_HTTP_PORT\") or os.environ.get(\"OPENVERTEX_PORT\") or 8080}/readyz', timeout=2)"
# SIGTERM drains: /readyz answers 503, requests in flight finish within drain_timeout_s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["openvertex", "serve"]
