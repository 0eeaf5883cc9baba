# One image per service, chosen at build time:
#   docker build --build-arg SERVICE=keras  -t covidxray-keras  .
#   docker build --build-arg SERVICE=automl -t covidxray-automl .
#   docker run --rm -p 8080:8080 covidxray-keras        # then http://127.0.0.1:8080
# The command is `make serve`'s: gunicorn with covidxray.gunicorn_conf, bound to 0.0.0.0:$PORT
# (Cloud Run sets PORT). The package runs from its source tree at /app (on PYTHONPATH), so the
# Keras service finds its model where it does in the repository: /app/app-keras/model/.

FROM python:3.11-slim-bookworm AS build
ARG SERVICE=keras
# The cloud backends (gs://, bigquery://) that deploy/*.yaml configure; empty for a local-only image.
ARG CLOUD_EXTRA=gcp
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only the metadata: the project installs as its dependencies plus the `covidxray` command, while
# the code itself comes from /app in the final stage, so code changes keep this layer cached.
COPY requirements.txt pyproject.toml README.md LICENSE ./
# Keras serves through onnxruntime only (extra `serve`, no TensorFlow); AutoML needs onnxruntime too,
# for the gate that runs the shipped model's twin before a film is sent to Vertex AI.
RUN case "$SERVICE" in \
      keras) extras=serve ;; \
      automl) extras=automl ;; \
      *) echo "SERVICE must be keras or automl, not '$SERVICE'" >&2; exit 1 ;; \
    esac \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install -c requirements.txt ".[${extras}${CLOUD_EXTRA:+,$CLOUD_EXTRA}]" \
 && if /opt/venv/bin/python -c 'import tensorflow' 2>/dev/null; then \
      echo "the $SERVICE image must not carry TensorFlow" >&2; exit 1; \
    fi

FROM python:3.11-slim-bookworm AS runtime
ARG SERVICE=keras
LABEL org.opencontainers.image.title="covidxray-${SERVICE}" \
      org.opencontainers.image.description="Chest X-ray classifier service (covid, pneumonia, normal); not for diagnosis" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    COVIDXRAY_DATA_DIR=/var/lib/covidxray
# Tesseract (Debian bookworm's, pinned with the base) reads burnt-in text on uploads and DICOM instances
# (COVIDXRAY_BURNED_IN); without it nothing is blacked out and answers only warn that it was not checked.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tesseract-ocr=5.3.0-2 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 covidxray \
 && useradd --system --uid 10001 --gid covidxray --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin covidxray \
 && install -d -o covidxray -g covidxray -m 0700 /var/lib/covidxray
COPY --from=build /opt/venv /opt/venv
COPY covidxray/ /app/covidxray/
# The service folder: wsgi.py and, for Keras, the shipped model (baked into the image). The AutoML
# service carries the shipped model as well: its gate for non-frontal inputs runs it.
COPY app-keras/model/ /app/app-keras/model/
COPY app-${SERVICE}/ /app/app-${SERVICE}/
# Compile once as root (the app user cannot write here); refuse an image whose code cannot import
# or whose model does not load.
RUN python -m compileall -q /app \
 && python -c 'import covidxray.web.app, covidxray.cli' \
 && if [ "$SERVICE" = keras ]; then \
      python -c 'from covidxray.predictors.keras import KerasPredictor; KerasPredictor().load()'; \
    fi
WORKDIR /app/app-${SERVICE}
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '8080'), timeout=4)"]
CMD ["gunicorn", "-c", "python:covidxray.gunicorn_conf", "wsgi:app"]
