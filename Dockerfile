# syntax=docker/dockerfile:1
# kerasserve image: the same install and start steps as `make run`.
#
#   docker build -t kerasserve .                      # CPU (default target)
#   docker build --target gpu -t kerasserve:gpu .     # GPU: tensorflow[and-cuda], needs the NVIDIA container toolkit
#   docker run -p 8000:8000 -v kerasserve-models:/models kerasserve
#   docker run -p 8000:8000 -v "$PWD/models:/models" --user "$(id -u):$(id -g)" kerasserve   # a host folder
#
# Models live in the /models volume (MODELS_DIR). On start the container runs
# `python -m service default-model --if-empty` (trains the small `digits` model into /models when it
# holds no model, well under a minute on 2 cores), then `gunicorn wsgi:app`, exactly like `make run`.
# See docs/operations.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the pinned requirements (the same file `make` installs) -----------
FROM ${PYTHON_IMAGE} AS build-cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt

FROM build-cpu AS build-gpu
# Same TensorFlow version as requirements.txt, plus the CUDA and cuDNN wheels it needs.
RUN pip install --no-cache-dir "tensorflow[and-cuda]==2.21.0"

# ---- runtime: slim base, non-root user, the app, /models as a volume ----------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    KERAS_HOME=/tmp/keras \
    MODELS_DIR=/models \
    PORT=8000
RUN groupadd --system --gid 10001 kerasserve \
    && useradd --system --uid 10001 --gid kerasserve --home-dir /app --no-create-home kerasserve \
    && mkdir -p /models \
    && chown 10001:10001 /models \
    && chmod 0755 /models
WORKDIR /app
COPY --chown=root:root service/ service/
COPY --chown=root:root models/plugins/digits.py models/plugins/digits.py
COPY --chown=root:root wsgi.py gunicorn.conf.py requirements.txt ./
COPY --chown=root:root deploy/docker/healthcheck.py deploy/docker/healthcheck.py
USER 10001:10001
VOLUME ["/models"]
EXPOSE 8000 8500
# start-period covers TensorFlow's import, the first-run training and the first model loads.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "/app/deploy/docker/healthcheck.py"]
CMD ["sh", "-c", "python -m service default-model --if-empty && exec gunicorn wsgi:app"]

# ---- final images: runtime + one of the virtualenvs (COPY writes root-owned, read-only files) ----
FROM runtime AS gpu
COPY --from=build-gpu /opt/venv /opt/venv

# The last stage is what a plain `docker build .` produces.
FROM runtime AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
