# forgetd service image: `forgetd db upgrade`, then `forgetd serve` (see docker-compose.yml).
# CPU torch by default; for GPU workers build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=postgres,ray

ENV PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    FORGETD_HOME=/var/lib/forgetd \
    FORGETD_CACHE_DIR=/var/lib/forgetd/cache

RUN useradd --system --create-home --home-dir /var/lib/forgetd forgetd

WORKDIR /opt/forgetd
# torch first, from the index that matches the hardware: an open range would pull a CUDA build
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md alembic.ini ./
COPY forgetd ./forgetd
COPY migrations ./migrations
COPY adapters ./adapters
COPY policies ./policies
RUN pip install --no-cache-dir ".[${EXTRAS}]"

USER forgetd
VOLUME ["/var/lib/forgetd"]
EXPOSE 9464
ENTRYPOINT ["forgetd"]
CMD ["serve", "--executor", "local", "--metrics-port", "9464"]
