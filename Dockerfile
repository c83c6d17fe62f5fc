# leadrouter: one image for every part (worker, beat, api, migrate, CLI).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml README.md ./
COPY routing/ routing/
COPY worker/ worker/
RUN pip install .

# the rules ship with the image; docker-compose.yml mounts ./config over them
COPY config/ config/

RUN useradd --system --create-home --uid 10001 leadrouter \
    && mkdir -p /app/var && chown leadrouter /app/var
USER leadrouter

EXPOSE 8000
ENTRYPOINT ["leadrouter"]
CMD ["--help"]
