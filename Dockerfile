# One image for every bday process: worker (default), beat, flower, `bday metrics`, `bday db upgrade`.
#   docker build -t bday:latest .
#   docker run --rm -e RABBITMQ_URL=... -e DATABASE_URL=... bday:latest              # worker
#   docker run --rm ... bday:latest celery -A bday beat --loglevel=INFO              # beat
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package build needs (pyproject.toml names README.md as the readme and ships
# migrations/ inside the package as bday.migrations); never the developer's .venv or .env.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bday ./bday
COPY migrations ./migrations
# The fake extra (aiohttp) lets compose's fake-email profile run from this same image.
RUN pip install .[fake] \
    && rm -rf /src

# Run as an unprivileged user with a writable home as working directory.
RUN useradd --create-home --home-dir /home/bday --uid 10001 --user-group bday
USER bday
WORKDIR /home/bday

# 9751: the worker's own metrics (WORKER_METRICS_PORT); 9750: `bday metrics`; 5555: Flower.
EXPOSE 9751 9750 5555

CMD ["celery", "-A", "bday", "worker", "--loglevel=INFO"]
