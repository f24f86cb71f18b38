#!/usr/bin/env bash
# One iteration through `python -m src.main` on one GPU machine without network, in two commands
# back to back (the machine is held between them, so /tmp and the clone's .cache carry over),
# each carrying one part of `gpu_vllm.sh pack .gpu`:
#
#   benchmarks/gpu_iteration.sh prepare   OUT [model]  # carry .gpu/carry.part-aa .gpu/carry.sha256 .whl
#   benchmarks/gpu_iteration.sh iteration OUT [model]  # carry .gpu/carry.part-ab .gpu/carry.sha256 .whl
#
# .whl: the wheels of gpu_generation.sh, and llm-blender 0.0.2 with what its import needs
# (`pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl llm-blender==0.0.2
# dataclasses-json==0.6.7 marshmallow==3.26.2`). `prepare`: the real-shape policy, prompts and
# PairRM (`python -m benchmarks iteration --build-only`), then PairRM batched against
# llm-blender's rank(batch_size=1) at DeBERTa-v3-large's shape. `iteration`: vLLM installed from
# both parts, then generate, rank, pairs and train, each stage's whole log kept under OUT/logs.
# Every benchmark writes its results file after each case, so a command cut off at its limit
# still returns what it measured. model: mistral-7b-instruct-v0.2 (default) or gemma-2-9b-it.
set -uo pipefail
phase=$1 out=$2 model=${3:-mistral-7b-instruct-v0.2}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
here=$(cd "$(dirname "$0")" && pwd)
ROOT=/tmp/iteration-$model
bash "$here/gpu_vllm.sh" stash .gpu /tmp/parts
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-config .whl/*.whl
case "$phase" in
prepare)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.csv"
    export PYTHONPATH=/tmp/site-config
    t0=$(date +%s)
    python3 -m benchmarks iteration --model "$model" --root "$ROOT" --build-only \
        --out "$out/iteration_build.json" || exit 1
    echo "built in $(($(date +%s) - t0)) s"
    python3 -m benchmarks ranking --backbone large --device cuda --datasets medium \
        --max-prompts 8 --batch-sizes 32 --repeats 1 --retries 0 --max-wait 5 --timeout 240 \
        --out "$out/ranking_gpu_large.json"
    ;;
iteration)
    t0=$(date +%s)
    bash "$here/gpu_vllm.sh" unpack /tmp/parts /tmp/site || exit 1
    echo "vLLM unpacked in $(($(date +%s) - t0)) s"
    export PYTHONPATH=/tmp/site:/tmp/site-config
    python3 -m benchmarks iteration --model "$model" --root "$ROOT" --logs "$out/logs" \
        --retries 0 --max-wait 5 --timeout 420 --out "$out/iteration_gpu_${model%%-*}.json"
    ;;
*)
    echo "usage: $0 prepare|iteration OUT [model]" >&2
    exit 2
    ;;
esac
