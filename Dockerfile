# The civic-iot processes (ingest, worker, alerts, setup) for docker-compose.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY civic_iot civic_iot
COPY ingest ingest
COPY processors processors
COPY alerts alerts
COPY simulator simulator
COPY ops ops
COPY deploy deploy
RUN pip install --no-cache-dir -c constraints.txt .
ENV CIVIC_DATA_DIR=/data CIVIC_REGISTRY=/app/deploy/devices.yaml
ENTRYPOINT ["civic-iot"]
