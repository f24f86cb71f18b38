# Sourced by benchmarks/gpu_*.sh: what a command on a GPU machine without network does around
# its phases. The machine takes at most ~60 MB of files a command and returns at most 8 files
# from OUT, so what a benchmark needs arrives carried (wheels, and vLLM in two parts made by
# `gpu_vllm.sh pack`), each phase runs under a timeout shorter than the call's with its whole
# log under OUT/logs, and `pack_logs OUT` packs the logs and results into one file.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# install SITE WHEEL...: wheels into SITE, offline, and SITE first on PYTHONPATH
install() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$@" &&
        export PYTHONPATH=$1${PYTHONPATH:+:$PYTHONPATH}
}

# stash DIR PARTS: this command's part of vLLM's carry, kept for the command that unpacks it
stash() {
    mkdir -p "$2"
    cp "$1"/carry.part-* "$1"/carry.sha256 "$2"/
}

# unpack PARTS SITE: every part checked and joined, vLLM's tree and wheels installed into SITE
unpack() {
    local parts=$1 site=$2 work t0
    work=$(mktemp -d) t0=$(date +%s)
    (cd "$parts" && sha256sum -c --quiet carry.sha256) &&
        cat "$parts"/carry.part-* | tar -C "$work" -xf - &&
        (cd "$work" && sha256sum -c --quiet SHA256SUMS) || return 1
    mkdir -p "$site"
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
        "$work/vllm.tar.xz" "$site" && install "$site" "$work"/wheels/*.whl || return 1
    rm -rf "$work"
    echo "vLLM unpacked in $(($(date +%s) - t0)) s"
}

# machine OUT: OUT/logs and OUT/results made, the GPU and the disks described there
machine() {
    mkdir -p "$1/logs" "$1/results"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$1/logs/gpu.csv"
    df -h / /tmp /dev/shm >"$1/logs/df.txt"
}

# phase OUT NAME SECONDS CMD...: CMD under a timeout, its output in OUT/logs/NAME.log, its last
# lines shown; its exit status
phase() {
    local out=$1 name=$2 limit=$3 rc
    shift 3
    mkdir -p "$out/logs"
    timeout "$limit" "$@" >"$out/logs/$name.log" 2>&1
    rc=$?
    tail -"${TAIL:-6}" "$out/logs/$name.log"
    return $rc
}

# pack_logs OUT: OUT/logs* (each stage's whole log) and OUT/results into OUT/logs.tgz
pack_logs() ( # a subshell: the caller stays in its own folder
    cd "$1" && shopt -s nullglob && set -- logs*/ result[s]/
    [ $# -eq 0 ] || { tar czf logs.tgz "$@" && rm -rf "$@"; }
)
