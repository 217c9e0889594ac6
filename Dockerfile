# VL-PEFT Lab on a Hugging Face Docker Space (or any Docker host): `docker build -t vlpeft . && docker run -p 7860:7860 vlpeft`
# Runs as uid 1000 as Spaces do. The job queue and runs in progress stay on local disk (~/.vlpeft); ended runs
# are published to /data/vlpeft when a Storage Bucket is mounted at /data (docs/spaces.md).
# Public hosting: set VLPEFT_DEMO=1 (and VLPEFT_AUTH=user:password for a login).
# BASE_IMAGE: any Debian-based image with Python 3.11 and its venv module (`make docker-test` builds one
# locally with debootstrap where no registry is reachable); Spaces use the default.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Java runs the PTB tokenizer and METEOR of the caption metrics.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/home/user/.cache/huggingface \
    GRADIO_SERVER_NAME=0.0.0.0 \
    PORT=7860
WORKDIR /home/user/app

# torch first from the CPU wheel index (the default index gives the multi-GB CUDA build); a GPU host passes
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128. A virtual environment owned by the user:
# the packages stay writable (pycocoevalcap's PTB tokenizer writes a temporary file next to itself), and a
# Debian Python's own packages are left alone (PEP 668).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY --chown=user requirements.txt .
RUN python -m venv /home/user/venv \
    && pip install --no-cache-dir --index-url "$TORCH_INDEX" "$(grep -E '^torch==' requirements.txt)" \
    && pip install --no-cache-dir -r requirements.txt

COPY --chown=user . .

EXPOSE 7860
CMD ["python", "-m", "app"]
