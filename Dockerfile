# hashdb: one container, SQLite under /data by default; set HASHDB_DATABASE_URL
# for PostgreSQL. Media is never written to disk; only hashes and the index snapshot.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HASHDB_DATA_DIR=/data \
    HASHDB_HOST=0.0.0.0 \
    HASHDB_PORT=8000 \
    # One BLAS thread per process: hashing parallelises across requests instead.
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY hashdb ./hashdb
COPY ingest ./ingest
COPY api ./api
RUN pip install --no-cache-dir . \
    && useradd --system --home /data hashdb \
    && mkdir -p /data && chown hashdb /data

USER hashdb
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz').status == 200 else 1)"
CMD ["hashdb", "serve"]
