# kubespeed images, one file, two targets:
#
#   docker build --target operator -t kubespeed-operator .   # kopf operator, no torch
#   docker build --target trainer  -t kubespeed-trainer  .   # DeepSpeed trainer, entrypoint `kubespeed launch`
#
# The paths, user and entrypoint below are the ones kubespeed/wiring.py writes into
# pods; tests/unit/test_ship.py fails when the two disagree.

# The operator's base: any image with Python 3.11 and its venv module. Where public
# registries cannot be reached, cli/kubespeed_cli/dev/image.py makes one from Debian's own
# packages and passes it with --build-arg PYTHON_BASE=...
ARG PYTHON_BASE=python:3.11-slim-bookworm
# The trainer's bases and the Python they install with apt. The released image uses
# NVIDIA's CUDA images (why, above the trainer stages); where those cannot be pulled,
# the trainer target also builds from a plain Debian or Ubuntu base with the same pins
# (cli/kubespeed_cli/dev/image.py passes bookworm's python3.11 and no prebuilt ops).
ARG TRAINER_BUILD_BASE=nvidia/cuda:13.0.2-devel-ubuntu24.04
ARG TRAINER_BASE=nvidia/cuda:13.0.2-base-ubuntu24.04
ARG TRAINER_PYTHON=python3.12

# ---------------------------------------------------------------- operator

FROM ${PYTHON_BASE} AS operator-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/kubespeed
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kubespeed ./kubespeed
COPY operator ./operator
COPY trainer ./trainer
COPY cli ./cli
# Only the operator extra: kopf and what the operator's own client needs, never torch. The
# versions are the exact pins in pyproject.toml, which hadolint does not read.
# hadolint ignore=DL3013
RUN /opt/kubespeed/bin/pip install ".[operator]"

FROM ${PYTHON_BASE} AS operator
COPY --from=operator-build /opt/kubespeed /opt/kubespeed
# The Deployment mounts the root filesystem read-only: no bytecode is written at
# run time (pip compiled it at install) and Python's stdout is not buffered.
ENV PATH=/opt/kubespeed/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# 65532 is the conventional "nonroot" id; numeric so that runAsNonRoot can be verified.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["kubespeed", "operator"]

# ---------------------------------------------------------------- trainer

# torch 2.13.0's wheel on PyPI is built for CUDA 13.0 (it pulls the CUDA 13 runtime,
# cuBLAS, cuDNN and NCCL as nvidia-* wheels). DeepSpeed compiles its ops with nvcc
# against that torch and requires the same CUDA major.minor, so the build stage is
# the CUDA 13.0 devel image; the final stage needs no nvcc and takes the small
# CUDA base image, which carries the NVIDIA container toolkit settings.
# Ubuntu 24.04 ships Python 3.12 (kubespeed needs >= 3.11).
FROM ${TRAINER_BUILD_BASE} AS trainer-build
ARG TRAINER_PYTHON
ARG TORCH_VERSION=2.13.0
ARG DEEPSPEED_VERSION=0.19.8
# DeepSpeed ops compiled into the image, so no pod compiles them at start-up: FusedAdam
# for the GPU optimizer, CPUAdam for ZeRO-Offload of optimizer state, both compiled with
# nvcc against the CUDA torch. A base without nvcc passes DS_BUILD_OPS="" and DeepSpeed
# builds an op the first time a job uses it (with g++, see the final stage).
ARG DS_BUILD_OPS="DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1"
# Volta and older are gone in CUDA 13; Ampere, Ada, Hopper, Blackwell, and PTX for what comes next.
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0;10.0;12.0+PTX"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends ${TRAINER_PYTHON} ${TRAINER_PYTHON}-dev ${TRAINER_PYTHON}-venv g++ \
    && rm -rf /var/lib/apt/lists/*
RUN ${TRAINER_PYTHON} -m venv /opt/kubespeed
ENV PATH=/opt/kubespeed/bin:$PATH
# torch, DeepSpeed and the rest are separate layers: a code change rebuilds only the last.
# hadolint ignore=DL3059
RUN pip install "torch==${TORCH_VERSION}"
# --no-build-isolation lets DeepSpeed's build see the torch installed above.
# hadolint ignore=DL3059
RUN env ${DS_BUILD_OPS} TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" \
    pip install --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kubespeed ./kubespeed
COPY operator ./operator
COPY trainer ./trainer
COPY cli ./cli
# The exact pins are in pyproject.toml (torch and DeepSpeed match the ARGs above; a test checks).
# hadolint ignore=DL3013
RUN pip install ".[trainer]"

FROM ${TRAINER_BASE} AS trainer
ARG TRAINER_PYTHON
ENV DEBIAN_FRONTEND=noninteractive
# g++ and Python.h stay for what compiles at run time: deepspeed.compile when a job turns
# it on (TorchInductor's CPU kernels with g++, Triton's GPU launcher with the C compiler)
# and any DeepSpeed op the build did not prebuild, which DeepSpeed compiles on first use.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ${TRAINER_PYTHON} ${TRAINER_PYTHON}-dev g++ \
    && rm -rf /var/lib/apt/lists/*
COPY --from=trainer-build /opt/kubespeed /opt/kubespeed
# The CUDA images' stock `ubuntu` user holds uid 1000; the trainer user takes its place.
RUN if id ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && groupadd --gid 1000 kubespeed \
    && useradd --uid 1000 --gid 1000 --home-dir /workspace --no-create-home --shell /usr/sbin/nologin kubespeed \
    && mkdir -p /workspace /checkpoints /data /tmp/kubespeed-cache \
    && chown 1000:1000 /workspace /checkpoints /data /tmp/kubespeed-cache
# Pods mount the root filesystem read-only with emptyDirs at /tmp and /workspace:
# caches (torch extensions, Triton, Hugging Face) go under XDG_CACHE_HOME there.
ENV PATH=/opt/kubespeed/bin:$PATH \
    HOME=/workspace \
    XDG_CACHE_HOME=/tmp/kubespeed-cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /workspace
USER 1000:1000
EXPOSE 29500 9400
ENTRYPOINT ["kubespeed", "launch"]
