#!/usr/bin/env bash
# vLLM 0.26.0 (the CUDA build the `vllm` extra pins) for a GPU machine that has no network and
# takes at most ~60 MB of files per command, in two parts. Made here, installed there:
#
#   benchmarks/gpu_vllm.sh pack .gpu                      # here: .gpu/carry.part-aa, -ab (~111 MB)
#   benchmarks/gpu_vllm.sh stash .gpu /tmp/parts          # there, one part carried per command
#   benchmarks/gpu_vllm.sh unpack /tmp/parts /tmp/site    # there, the last command: then
#   export PYTHONPATH=/tmp/site                           # vLLM and what its import needs
#
# `pack` keeps of vLLM's wheel (290 MB) what one Hopper GPU runs dense models with: without
# FlashAttention 2 (FA3 is Hopper's; vLLM imports either when present), the MoE kernels (imported
# when present), the Rust front end (the OpenAI server's), DeepGEMM and the SM100 FMHA sources,
# the rest recompressed with xz. Beside it: the wheels its import and offline engine ask for
# that the machine's image (Python 3.12, torch 2.11.0+cu130, transformers 5.17) lacks, found by
# importing vLLM's engine, worker, model and attention modules; and what the project itself needs
# there: hydra-core and omegaconf (the config), transformers 5.23 (the image's 5.17 is below the
# project's floor; unpacked into the xz tree like vLLM: 3.8 MB instead of a 13 MB wheel),
# llm-blender and its dataclasses-json (the ranker), alpaca-eval and what its import asks for
# (the eval stage's length-controlled win rate). Nothing of the OpenAI server beyond what
# `import vllm` loads. `stash` and `unpack`: benchmarks/gpu_carry.sh.
source "$(dirname "$0")/gpu_carry.sh"

VLLM=vllm==0.26.0
WHEELS="annotated_types==0.8.0 apache_tvm_ffi==0.1.10 astor==0.8.1 blake3==1.0.11
cachetools==8.0.2 cbor2==6.3.0 compressed_tensors==0.17.0 depyf==0.20.0 dill==0.4.1
dnspython==2.9.2 email_validator==2.4.0 fastapi==0.136.3 googleapis_common_protos==1.76.0
httpcore2==2.16.2 httpx2==2.16.2 hydra_core==1.3.2 ijson==3.6.0 interegular==0.3.3 jsonschema==4.26.0
jsonschema_specifications==2025.9.1 lark==1.2.2 llguidance==1.7.6 lm_format_enforcer==0.11.3
mistral_common==1.13.1 msgspec==0.22.0 nvtx==0.2.15 omegaconf==2.3.1 openai==3.57.0
openai_harmony==0.0.8 opentelemetry_api==1.45.2 opentelemetry_exporter_http_transport==0.66b2
opentelemetry_exporter_otlp==1.45.2 opentelemetry_exporter_otlp_common==0.66b2
opentelemetry_exporter_otlp_proto_common==1.45.2 opentelemetry_exporter_otlp_proto_grpc==1.45.2
opentelemetry_exporter_otlp_proto_http==1.45.2 opentelemetry_proto==1.45.2
opentelemetry_sdk==1.45.2 opentelemetry_semantic_conventions==0.66b2
opentelemetry_semantic_conventions_ai==0.5.1 outlines_core==0.2.14
partial_json_parser==0.2.1.1.post7 prometheus_fastapi_instrumentator==8.1.0 pybase64==1.5.1
pycountry==26.2.16 pydantic==2.14.4 pydantic_core==2.50.5 pydantic_extra_types==2.11.1
pyelftools==0.33 python_json_logger==4.2.0 python_multipart==0.0.34 pyzmq==27.3.0
referencing==0.37.0 rpds_py==2026.9.1 setproctitle==1.3.8 sniffio==1.3.1 starlette==1.10.0
torch_c_dlpack_ext==0.1.5 truststore==0.10.5 typing_inspection==0.4.5 xgrammar==0.2.7
llm_blender==0.0.2 dataclasses_json==0.6.7 marshmallow==3.26.2
alpaca_eval==0.6.6 datasets==5.2.0 fire==0.7.1 multiprocess==0.70.19 python_dotenv==1.2.4
termcolor==3.3.0 setuptools==81.0.0"  # alpaca-eval 0.6.6 imports pkg_resources (gone in 82)
UNPACKED="transformers==5.23.0"  # pure Python, into the xz tree beside vLLM
SDISTS="antlr4-python3-runtime==4.9.3"  # omegaconf's: no wheel on PyPI, built here
DROP="vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/_moe_C_stable_libtorch.abi3.so vllm/vllm-rs
vllm/third_party/deep_gemm vllm/third_party/fmha_sm100"
PART=56M

case "${1:-}" in
pack)
    set -e
    out=$2 work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    platforms=()
    for p in manylinux_2_{17,24,26,27,28,31,34,35}_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
        platforms+=(--platform "$p")
    done
    get=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12
         --implementation cp "${platforms[@]}")
    "${get[@]}" -d "$work/vllm" "$VLLM"
    # shellcheck disable=SC2086
    "${get[@]}" -d "$work/unpacked" $UNPACKED
    # shellcheck disable=SC2086
    "${get[@]}" -d "$work/carry/wheels" $WHEELS
    # shellcheck disable=SC2086
    python3 -m pip wheel -q --no-deps -w "$work/carry/wheels" $SDISTS
    mkdir "$work/tree"
    (cd "$work/tree" && python3 -m zipfile -e "$work"/vllm/vllm-*.whl . && rm -rf $DROP &&
        for w in "$work"/unpacked/*.whl; do python3 -m zipfile -e "$w" .; done)
    tar -C "$work/tree" -cf - . | xz -9 -T0 >"$work/carry/vllm.tar.xz"
    (cd "$work/carry" && sha256sum vllm.tar.xz wheels/* >SHA256SUMS)
    mkdir -p "$out"
    rm -f "$out"/carry.part-*
    tar -C "$work/carry" -cf - . | split -b "$PART" - "$out/carry.part-"
    (cd "$out" && sha256sum carry.part-* >carry.sha256)
    ls -l "$out"
    ;;
stash | unpack) "$@" ;;
*)
    echo "usage: $0 pack DIR | stash DIR PARTS | unpack PARTS SITE" >&2
    exit 2
    ;;
esac
