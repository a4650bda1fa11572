# The API (and the one-shot migration). kdcore.spec needs torch to know the model zoo and the
# methods; the API never trains, so the smaller CPU wheel would do, but one image recipe is kept.
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
EXPOSE 8000
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]
