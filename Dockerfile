# syntax=docker/dockerfile:1
# Build: docker build -t window-gate:0.1.0 .   Migrate once per release: docker run … window-gate migrate
# (deploy/compose.yaml and deploy/kubernetes/ run it as a one-shot service / Job before the gates).
#
# The base image, pinned by digest so a rebuild gets the same bytes: python:3.11-slim as published for
# Python 3.11.16 on Debian 13 (trixie), the multi-platform index digest. To move to a newer 3.11-slim, read
# the tag's current digest and replace it here:
#   docker buildx imagetools inspect python:3.11-slim   (the "Digest:" line)
ARG PYTHON_IMAGE=python:3.11-slim@sha256:1042b61448fef4ba92d16a8c7eb4996d027568ce64792a7877fd88511e0af7c6

FROM ${PYTHON_IMAGE} AS build
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY src ./src
COPY migrations ./migrations
RUN uv sync --locked --no-dev --no-editable

FROM ${PYTHON_IMAGE}
# DATA_DIR exists, owned by the user, so a volume mounted there (the sandbox's state) is writable by it.
RUN useradd --create-home --uid 10001 gate && install -d -o gate -g gate /home/gate/data
COPY --from=build /opt/venv /opt/venv
# Bytecode was compiled at build time: nothing writes beside the code, so the root filesystem can be
# read-only (Kubernetes: readOnlyRootFilesystem, with /tmp and DATA_DIR as emptyDir volumes).
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 WINDOW_GATE_DATA_DIR=/home/gate/data
USER 10001
WORKDIR /home/gate
EXPOSE 8000
# Ready, not merely alive: the database answers and its schema is at this code's migration. urlopen raises
# on any status but 2xx, so a 503 (database down, not migrated) is unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["window-gate", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-migrate"]
