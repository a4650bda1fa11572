# A GPU worker: one Celery worker process per GPU. The torch wheel from the package index
# bundles the CUDA runtime; the host needs only the NVIDIA driver and container toolkit.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN pip install "torch==2.13.0"
COPY pyproject.toml README.md alembic.ini ./
COPY kdcore kdcore
COPY store store
COPY api api
COPY worker worker
COPY client client
COPY service service
COPY migrations migrations
RUN pip install ".[service]"
# -c 1: one job at a time on this GPU; a fresh child process per job (store/queue.py).
CMD ["celery", "-A", "worker.app", "worker", "--loglevel=INFO", "-c", "1", "-Q", "distillery"]
