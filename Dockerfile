# syntax=docker/dockerfile:1
# The tidelog image: the CLI, the REST API and `tidelog connector apply`, all from one build
# so docker-compose.yml runs every tidelog service from the same, locked dependency set.
FROM python:3.11-slim

# Same uv as the Makefile, which writes uv.lock: an older uv may not read its format.
RUN pip install --no-cache-dir uv==0.13.9

# uv uses the image's Python 3.11 (pyproject pins 3.11) and never downloads another; its
# cache is a BuildKit mount, so files are copied out of it rather than hard-linked.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy

WORKDIR /app

# Dependencies first, in their own layer: code edits then rebuild in seconds.
# --frozen installs exactly what uv.lock pins, without re-resolving: the image gets the
# versions the tests ran against, never whatever the index serves on build day.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project

# The project itself, as the wheel users get: it carries the connector template (package
# data) and the example recipes the demo and TIDELOG_API_RECIPES=examples use.
COPY tidelog ./tidelog
COPY cdc ./cdc
COPY snapshotter ./snapshotter
COPY trainer ./trainer
COPY api ./api
COPY examples ./examples
COPY connectors ./connectors
RUN --mount=type=cache,target=/root/.cache/uv \
    uv build --wheel --out-dir /tmp/dist \
    && uv pip install --python /app/.venv/bin/python --no-deps /tmp/dist/tidelog-*.whl \
    && rm -rf /tmp/dist tidelog cdc snapshotter trainer api examples

# Run unprivileged; TIDELOG_HOME (archive, snapshots, config) lives on a volume at /data.
# The directory exists in the image, owned by that user, so a fresh named volume
# mounted there starts out writable.
RUN useradd --create-home --uid 10001 tidelog && mkdir /data && chown tidelog:tidelog /data
USER tidelog
ENV PATH="/app/.venv/bin:${PATH}" \
    TIDELOG_HOME=/data

EXPOSE 8000
ENTRYPOINT ["tidelog"]
CMD ["api", "serve", "--host", "0.0.0.0", "--port", "8000"]
