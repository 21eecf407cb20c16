# servekit serving image: Ray's own base image plus the project.
#   CPU: docker build -t servekit:0.1.0 .
#   GPU: docker build --build-arg VARIANT=gpu -t servekit:0.1.0-gpu .
# The GPU variant starts from Ray's GPU image and installs torch's CUDA build and
# onnxruntime-gpu (the `gpu` extra) in place of the CPU builds.
# The Ray version and Python version must match pyproject.toml (a test checks it).
ARG VARIANT=cpu
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu
ARG RAY_GPU_IMAGE=rayproject/ray:2.60.0-py311-gpu

FROM ${RAY_IMAGE} AS base-cpu
FROM ${RAY_GPU_IMAGE} AS base-gpu
FROM base-${VARIANT}
ARG VARIANT

WORKDIR /home/ray/servekit
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

# Dependencies first, so code changes do not reinstall them. torch comes from PyTorch's
# index of the variant: the CPU build, or the CUDA 13.0 build (what onnxruntime-gpu
# 1.31 is built against too; both bring CUDA and cuDNN as pip packages).
# onnxruntime and onnxruntime-gpu both ship the `onnxruntime` module, so the GPU variant
# drops both after the install and puts back the CUDA build alone, at the version the
# gpu extra pins, then checks that it has the CUDA provider.
COPY --chown=ray:users pyproject.toml README.md ./
RUN mkdir -p servekit models configs deployments \
    && touch servekit/__init__.py models/__init__.py configs/__init__.py deployments/__init__.py \
    && case "${VARIANT}" in \
         cpu) torch_index=https://download.pytorch.org/whl/cpu; project=. ;; \
         gpu) torch_index=https://download.pytorch.org/whl/cu130; project=".[gpu]" ;; \
         *) echo "VARIANT must be cpu or gpu, not ${VARIANT}" >&2; exit 1 ;; \
       esac \
    && pip install --index-url "${torch_index}" "torch==2.13.0" \
    && pip install "${project}" \
    && pip uninstall -y servekit \
    && if [ "${VARIANT}" = gpu ]; then \
         ort_gpu="$(pip show onnxruntime-gpu | sed -n 's/^Version: //p')" \
         && pip uninstall -y onnxruntime onnxruntime-gpu \
         && pip install --no-deps "onnxruntime-gpu==${ort_gpu}" \
         && python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()"; \
       fi

# ONNX Runtime loads CUDA and cuDNN by name: point the loader at the pip-installed
# libraries (torch finds them by itself; ONNX Runtime does not).
USER root
RUN if [ "${VARIANT}" = gpu ]; then \
      python -c "import glob, os, site; print('\n'.join(sorted({os.path.dirname(p) for p in glob.glob(os.path.join(site.getsitepackages()[0], 'nvidia', '**', 'lib*.so*'), recursive=True)})))" \
        > /etc/ld.so.conf.d/servekit-nvidia-pip.conf \
      && ldconfig; \
    fi
USER ray

COPY --chown=ray:users servekit ./servekit
COPY --chown=ray:users models ./models
COPY --chown=ray:users configs ./configs
COPY --chown=ray:users deployments ./deployments
COPY --chown=ray:users stores ./stores
COPY --chown=ray:users serve_config.yaml ./
RUN pip install --no-deps .

# Artifacts are not baked in: replicas fetch them from the S3 prefix the cluster's
# serve config names (args.artifact_root) with the pod's IRSA role, verify their
# sha256 and cache them here.
ENV SERVEKIT_ARTIFACT_CACHE=/tmp/servekit-artifacts
USER ray
