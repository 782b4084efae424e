# One image for the API and the workers (the same genrobust package). TORCH_INDEX selects the torch build:
# CPU wheels by default; the gpu profile builds with a CUDA index (see docker-compose.yml).
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    GENROBUST_MODEL_DIR=/models GENROBUST_DATA_DIR=/data
WORKDIR /srv/genrobust
RUN pip install --index-url "$TORCH_INDEX" torch torchvision
COPY pyproject.toml README.md ./
COPY genrobust ./genrobust
COPY app ./app
COPY worker ./worker
RUN pip install ".[service]" && useradd --create-home --uid 1000 genrobust \
    && mkdir -p /models /data && chown genrobust /models /data
USER genrobust
EXPOSE 8000
CMD ["genrobust", "serve", "--host", "0.0.0.0", "--port", "8000"]
