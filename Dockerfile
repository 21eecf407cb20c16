# servekit serving image: Ray's own base image plus the project.
#   CPU: docker build -t servekit:0.1.0 .
#   GPU: docker build --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu -t servekit:0.1.0-gpu .
# The Ray version and Python version must match pyproject.toml (a test checks it).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu
FROM ${RAY_IMAGE}

WORKDIR /home/ray/servekit
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

# Dependencies first, so code changes do not reinstall them.
COPY --chown=ray:users pyproject.toml README.md ./
RUN mkdir -p servekit models configs deployments \
    && touch servekit/__init__.py models/__init__.py configs/__init__.py deployments/__init__.py \
    && pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
    && pip install . \
    && pip uninstall -y servekit

COPY --chown=ray:users servekit ./servekit
COPY --chown=ray:users models ./models
COPY --chown=ray:users configs ./configs
COPY --chown=ray:users deployments ./deployments
COPY --chown=ray:users serve_config.yaml ./
RUN pip install --no-deps .

# Artifacts are not baked in: replicas fetch them from the S3 prefix the cluster's
# serve config names (args.artifact_root) with the pod's IRSA role, verify their
# sha256 and cache them here.
ENV SERVEKIT_ARTIFACT_CACHE=/tmp/servekit-artifacts
USER ray
