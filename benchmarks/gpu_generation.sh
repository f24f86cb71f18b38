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
source "$(dirname "$0")/gpu_carry.sh"
phase=$1 out=$2 rate=${3:-}
CHECKPOINT=/tmp/agreement-gemma
QUICK=(--repeats 1 --retries 0 --max-wait 5)  # one machine, held for this command
RATE=(--device cuda --models gemma-2-9b-it --lengths spread --max-new-tokens 320 --prompts 128
      --batch-sizes 32 "${QUICK[@]}")
stash .gpu /tmp/parts
case "$phase" in
hf)
    machine "$out"
    install /tmp/site-config .whl/*.whl
    phase "$out" agreement_hf 540 python3 -m benchmarks agreement --peers hf --checkpoint "$CHECKPOINT" \
        "${QUICK[@]}" --out "$out/agreement.json"
    [ "$rate" != rate ] || phase "$out" generation_hf 420 python3 -m benchmarks generation "${RATE[@]}" \
        --peers ours --timeout 400 --out "$out/generation_gpu_gemma_hf.json"
    ;;
vllm)
    unpack /tmp/parts /tmp/site || exit 1
    phase "$out" agreement_vllm 320 python3 -m benchmarks agreement --peers vllm --checkpoint "$CHECKPOINT" \
        "${QUICK[@]}" --timeout 300 --engine-logs "$out/logs" --out "$out/agreement.json"
    [ "$rate" != rate ] || phase "$out" generation_vllm 380 python3 -m benchmarks generation "${RATE[@]}" \
        --peers vllm --timeout 360 --engine-logs "$out/logs" --out "$out/generation_gpu_gemma_vllm.json"
    ;;
*)
    echo "usage: $0 hf|vllm OUT [rate]" >&2
    exit 2
    ;;
esac
