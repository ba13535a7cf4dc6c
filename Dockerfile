# One image for every role: `infernetes operator` (the default command), `infernetes gateway` and `infernetes worker`.
#   docker build -t infernetes:0.1.0 .                                  # CPU torch
#   docker build --build-arg TORCH_VARIANT=cu126 -t infernetes:0.1.0-cuda .   # a CUDA build of torch
# The CUDA variant carries CUDA's runtime libraries in torch's wheels; the node's driver comes from the NVIDIA
# container toolkit. Its workers run the model on the GPU when one is visible (INFERNETES_WORKER_DEVICE=auto;
# cpu or cuda to force), fp16/bf16 only where a check batch stays within cosine 0.999 of fp32.
# Models are not baked in: worker pods download them (see README, "Air-gapped clusters", to bake one in).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/infernetes
WORKDIR /src
# torch first, from the variant's index, so that nothing else can pull a different build.
RUN /opt/infernetes/bin/pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md constraints.txt ./
COPY operator ./operator
COPY worker ./worker
RUN /opt/infernetes/bin/pip install -c constraints.txt . \
    && find /opt/infernetes -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="infernetes" \
      org.opencontainers.image.description="Elasticsearch-compatible inference endpoints on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/infernetes /opt/infernetes
RUN groupadd --gid 10001 infernetes \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin infernetes \
    && mkdir -p /var/lib/infernetes \
    && chown 10001:10001 /var/lib/infernetes
ENV PATH=/opt/infernetes/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HOME=/tmp/hf \
    INFERNETES_DATA_DIR=/var/lib/infernetes \
    INFERNETES_TORCH_VARIANT=${TORCH_VARIANT} \
    INFERNETES_WORKER_DEVICE=auto \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /tmp
EXPOSE 9200 8080
ENTRYPOINT ["infernetes"]
CMD ["operator"]
