# Tollgate gateway image. Build: docker build -t tollgate .
# Not built in CI (no Docker engine on the CI machines); kept in step with pyproject.toml, and
# tests/test_deploy_checks.py checks what it copies against .dockerignore and runs its
# HEALTHCHECK command against a live gateway. docker-compose.yml and deploy/kubernetes/ run it.

# Stage 1: build the wheel, compiling the router's C featurizer (router_models/_lexical.c).
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY gateway ./gateway
COPY router_models ./router_models
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

# Stage 2: the runtime image, without a compiler.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY --from=build /wheels /wheels
# the import check fails the build if the C featurizer did not compile (the numpy fallback
# works but makes every routing decision ~100 us slower)
RUN pip install /wheels/*.whl && rm -rf /wheels \
    && python -c "import router_models.lexical as m; assert m.NATIVE, 'C featurizer missing'" \
    && useradd --system --uid 10001 tollgate && mkdir -p /app/var && chown tollgate /app/var
USER tollgate

# Processes per container (uvicorn workers sharing the port; /metrics sums over them). One
# per core the container may use: see docs/operations.md for sizing.
ENV TOLLGATE_WORKERS=1
EXPOSE 8000
# Liveness of the process, no shell or curl in the image: /healthz answers as long as the
# event loop does. Readiness (upstreams reachable) is /readyz, for load balancers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# Inside the container the gateway listens on all interfaces so the published port works;
# publish it on the host's loopback only, or put it behind nginx (docker-compose.yml). The
# routing file is the one packaged in the wheel (its store under /app/var) unless one is
# mounted: set TOLLGATE_CONFIG (the compose file mounts deploy/gateway/ at /etc/tollgate) or
# mount it at /app/tollgate.yaml (made by `tollgate init`). SIGTERM drains requests in flight
# for server.drain_timeout_s, then exits. `tollgate demo` and `tollgate report` run as they are.
CMD ["tollgate", "serve", "--host", "0.0.0.0", "--port", "8000"]
