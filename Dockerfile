# One image for every Switchyard service; the command picks the service (compose.yaml, deploy/helm).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# Dependencies first, read from pyproject.toml alone: this layer is rebuilt only when they change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

# The code: libs/ is the package switchyard_gateway, services/ and cli/ its subpackages; all three are needed.
COPY README.md ./
COPY libs ./libs
COPY services ./services
COPY cli ./cli
RUN pip install --no-deps . && rm -rf build *.egg-info

# An unprivileged user owning the spool, so that a fresh named volume mounted there is its own.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin switchyard \
    && mkdir -p /var/lib/switchyard/spool && chown -R switchyard /var/lib/switchyard
USER switchyard
ENV SWITCHYARD_HOST=0.0.0.0 SWITCHYARD_PORT=8080 SWITCHYARD_SPOOL_DIR=/var/lib/switchyard/spool \
    SWITCHYARD_LOG_JSON=true

EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('SWITCHYARD_PORT', '8080')}/health/live\", timeout=3)"]
CMD ["python", "-m", "switchyard_gateway.services.gateway"]
