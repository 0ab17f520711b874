# The civic-iot processes (ingest, worker, alerts, setup) for docker-compose.
# They run as the unprivileged account civic (uid 10001), each with its own data dir volume
# at /data; only the one-shot setup service runs as root (docker-compose.yml says why).
# openssl (for the broker's local CA) comes with the base image's ca-certificates.
FROM python:3.11-slim
RUN groupadd --system --gid 10001 civic \
    && useradd --system --uid 10001 --gid civic --home-dir /data --no-create-home civic \
    && install -d -o civic -g civic -m 0700 /data
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY civic_iot civic_iot
COPY ingest ingest
COPY processors processors
COPY alerts alerts
COPY simulator simulator
COPY ops ops
COPY deploy deploy
# Editable: the code finds deploy/ (thresholds, registry seed, broker settings) beside it.
RUN pip install --no-cache-dir -c constraints.txt -e .
ENV CIVIC_DATA_DIR=/data CIVIC_REGISTRY=/data/devices.yaml
USER civic
ENTRYPOINT ["civic-iot"]
