# kb as a service: `kb serve` against the Qdrant server from docker-compose.yml.
# Installs exactly what the README's `make demo` installs (scripts/install.sh: pinned torch CPU wheel,
# constraints.txt, llama.cpp) — with llama.cpp's portable AVX2 kernels, since an image moves between hosts
# (KB_LLAMA_CPU=auto adds the build host's AVX-512/VNNI: faster, but only for hosts that have them).
# KB_NO_LOCAL_LLM=1 builds a smaller image that answers extractively (or through an OpenAI-compatible
# endpoint: KB_LLM_BACKEND=openai).
FROM python:3.11-slim-bookworm
ARG KB_NO_LOCAL_LLM=0
ARG KB_LLAMA_CPU=portable
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml constraints.txt README.md Makefile ./
COPY scripts ./scripts
COPY kb ./kb
RUN KB_NO_LOCAL_LLM=${KB_NO_LOCAL_LLM} KB_LLAMA_CPU=${KB_LLAMA_CPU} bash scripts/install.sh
ENV PATH=/app/.venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    KB_QDRANT_URL=http://qdrant:6333
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"
CMD ["kb", "serve", "--kb", "/data/index", "--docs", "/docs", "--host", "0.0.0.0", "--port", "8000"]
