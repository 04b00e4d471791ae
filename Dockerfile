# The OpenAI front end's image: target=k8s runs it as the pod's second container (target.openai_image, default
# llm-launch:0.1.0), as `python3 -m launcher.frontend ...` in front of Triton's gRPC port on the pod's loopback.
# It holds only the front end's dependencies (the `frontend` extra: no torch, no Triton); the tokenizer and the
# chat template come from the export, mounted read-only from the PVC.
#
#   docker build -t llm-launch:0.1.0 .          # from the repository root
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface
WORKDIR /opt/llm-launch
COPY pyproject.toml README.md ./
COPY launcher ./launcher
RUN python3 -m pip install --no-compile ".[frontend]" && rm -rf /opt/llm-launch/launcher

USER 65534:65534
EXPOSE 9000
CMD ["python3", "-m", "launcher.frontend", "--help"]
