# syntax=docker/dockerfile:1
# Build: docker build -t window-gate .   Run migrations once per release: docker run … window-gate migrate
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY src ./src
COPY migrations ./migrations
RUN uv sync --locked --no-dev --no-editable

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 gate
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 WINDOW_GATE_DATA_DIR=/home/gate/data
USER gate
WORKDIR /home/gate
EXPOSE 8000
HEALTHCHECK CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"]
CMD ["window-gate", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-migrate"]
