#!/usr/bin/env bash
# Gemma-2-9B on one GPU machine without network, in two commands back to back (the machine is
# held between them, so /tmp carries over), each carrying one part of `gpu_vllm.sh pack .gpu`:
#
#   benchmarks/gpu_generation.sh hf   OUT [rate]   # carry .gpu/carry.part-aa .gpu/carry.sha256 .whl
#   benchmarks/gpu_generation.sh vllm OUT [rate]   # carry .gpu/carry.part-ab .gpu/carry.sha256
#
# .whl: hydra-core, omegaconf and antlr4's wheels (the config needs them before vLLM's carry is
# whole), made here by `pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl
# hydra_core==1.3.2 omegaconf==2.3.1` and `pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3`. `hf`: the agreement check's checkpoint and HF's rows and scores (`rate`: then the HF
# backend's Gemma-2-9B rate, the baseline of vLLM's on this machine). `vllm`: vLLM installed
# from both parts, its rows and scores against HF's (`rate`: then its Gemma-2-9B rate at the real
# shapes), its whole log kept. Every benchmark writes its results file after each case, so a command cut off at
# its limit still returns what it measured.
set -uo pipefail
phase=$1 out=$2 rate=${3:-}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
here=$(cd "$(dirname "$0")" && pwd)
CHECKPOINT=/tmp/agreement-gemma
RATE=(--device cuda --models gemma-2-9b-it --lengths spread --max-new-tokens 320 --prompts 128
      --batch-sizes 32 --repeats 1 --retries 0 --max-wait 5)
bash "$here/gpu_vllm.sh" stash .gpu /tmp/parts
case "$phase" in
hf)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.csv"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-config .whl/*.whl
    export PYTHONPATH=/tmp/site-config
    python3 -m benchmarks agreement --peers hf --checkpoint "$CHECKPOINT" --retries 0 \
        --max-wait 5 --out "$out/agreement.json"
    if [ "$rate" = rate ]; then
        python3 -m benchmarks generation "${RATE[@]}" --peers ours --timeout 400 \
            --out "$out/generation_gpu_gemma_hf.json"
    fi
    ;;
vllm)
    t0=$(date +%s)
    bash "$here/gpu_vllm.sh" unpack /tmp/parts /tmp/site || exit 1
    echo "vLLM unpacked in $(($(date +%s) - t0)) s"
    export PYTHONPATH=/tmp/site
    python3 -m benchmarks agreement --peers vllm --checkpoint "$CHECKPOINT" --retries 0 \
        --max-wait 5 --timeout 300 --engine-logs "$out/logs" --out "$out/agreement.json"
    if [ "$rate" = rate ]; then
        python3 -m benchmarks generation "${RATE[@]}" --peers vllm --timeout 360 \
            --engine-logs "$out/logs" --out "$out/generation_gpu_gemma_vllm.json"
    fi
    ;;
*)
    echo "usage: $0 hf|vllm OUT [rate]" >&2
    exit 2
    ;;
esac
