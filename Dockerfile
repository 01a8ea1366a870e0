# Tollgate gateway image. Build: docker build -t tollgate .
# Not built in CI (no Docker engine on the CI machines); kept in step with pyproject.toml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY router_models ./router_models
COPY config ./config
RUN pip install . && useradd --system --uid 10001 tollgate && mkdir -p /app/var \
    && chown tollgate /app/var
USER tollgate

EXPOSE 8000
# Inside the container the gateway listens on all interfaces so the published port works;
# publish it on the host's loopback only (see docker-compose.yml).
CMD ["tollgate", "serve", "--config", "/app/config/routing.yaml", "--host", "0.0.0.0", "--port", "8000"]
