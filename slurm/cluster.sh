#!/usr/bin/env bash
# A real SLURM cluster on this machine, for the tests and for trying the SLURM path without a
# cluster: munged + slurmctld + one slurmd on localhost, or with `--nodes N` N slurmd nodes, each
# in a network namespace of its own (its own address, reached through a bridge on this machine),
# so that multi-node jobs really span nodes that talk over a network. Everything it writes (munge
# key, slurm.conf, state, spool, logs, pid files, what it made of the network) lives in one state
# directory; the namespaces' /etc/hosts are /etc/netns/<namespace>/hosts.
#
#   slurm/cluster.sh start  [--nodes N] [STATE_DIR]   install what is missing (root), start, wait
#   slurm/cluster.sh stop   [STATE_DIR]   cancel the jobs, stop the daemons, remove the namespaces
#   slurm/cluster.sh status [STATE_DIR]   up or down (exit 0 / 1); sinfo when up
#   slurm/cluster.sh env    [STATE_DIR]   eval "$(slurm/cluster.sh env)" points the clients at it
#
# STATE_DIR defaults to ${SELFPLAY_SLURM_DIR:-/tmp/selfplay-slurm}. Other settings (environment):
#   SELFPLAY_SLURM_PARTITION   partition name                    [debug]
#   SELFPLAY_SLURMCTLD_PORT    slurmctld port                    [6817]
#   SELFPLAY_SLURMD_PORT       slurmd port                       [6818]
#   SELFPLAY_SLURM_WAIT        seconds to wait for the cluster   [30]
# Exit status of start: 0 up; 1 cannot run here (not root, no apt, install failed);
# 2 the daemons did not come up (the message names the log files); 3 (--nodes > 1) the network
# namespaces cannot be made here (the message says why; the one-node form may still work).
set -euo pipefail

PROG="slurm/cluster.sh"
PACKAGES=(slurmctld slurmd slurm-client munge iproute2)
PARTITION="${SELFPLAY_SLURM_PARTITION:-debug}"
CTLD_PORT="${SELFPLAY_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${SELFPLAY_SLURMD_PORT:-6818}"
WAIT_S="${SELFPLAY_SLURM_WAIT:-30}"
# every line this script writes into slurm.conf starts below this marker; tests look for it
CONF_MARKER="# written by selfplay-lab slurm/cluster.sh"

usage() {
    echo "usage: $PROG {start [--nodes N]|stop|status|env} [STATE_DIR]" >&2
    exit 64
}

say() { echo "$PROG: $*"; }
err() { echo "$PROG: $*" >&2; }

set_paths() {
    STATE_DIR="${1:-${SELFPLAY_SLURM_DIR:-/tmp/selfplay-slurm}}"
    case "$STATE_DIR" in
        /*) ;;
        *) STATE_DIR="$PWD/$STATE_DIR" ;;
    esac
    CONF="$STATE_DIR/slurm.conf"
    LOG_DIR="$STATE_DIR/log"
    RUN_DIR="$STATE_DIR/run"
    MUNGE_DIR="$STATE_DIR/munge"
    MUNGE_KEY="$MUNGE_DIR/munge.key"
    MUNGE_SOCKET="$RUN_DIR/munge.socket"
    PID_MUNGED="$RUN_DIR/munged.pid"
    PID_CTLD="$RUN_DIR/slurmctld.pid"
    # what start made of the network, one "netns NAME" / "link NAME" / "dir PATH" per line, so
    # that stop removes exactly that (and a start that failed half-way is undone)
    MADE="$RUN_DIR/network"
    LOGS="$LOG_DIR/munged.log, $LOG_DIR/slurmctld.log, $LOG_DIR/slurmd-*.log"
    # names of this cluster's namespaces and links (at most 15 characters), the same for the
    # same state directory and different for another
    TAG="$(printf '%s' "$STATE_DIR" | sha1sum | cut -c1-5)"
}

# the slurmd pid files (one per node; written by the daemons as slurmd-<node>.pid)
slurmd_pid_files() {
    compgen -G "$RUN_DIR/slurmd-*.pid" || true
}

# the pid in a pid file when that process is alive, else nothing (exit 1)
live_pid() {
    local pid
    [ -s "$1" ] || return 1
    pid="$(tr -dc '0-9' <"$1")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# the slurmctld answers (bounded: scontrol gives up after a few seconds with no controller)
ctld_answers() {
    [ -f "$CONF" ] || return 1
    SLURM_CONF="$CONF" timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'
}

all_slurmd_live() {
    local file any=1
    for file in $(slurmd_pid_files); do
        live_pid "$file" >/dev/null || return 1
        any=0
    done
    return $any
}

any_slurmd_live() {
    local file
    for file in $(slurmd_pid_files); do
        live_pid "$file" >/dev/null && return 0
    done
    return 1
}

is_up() {
    live_pid "$PID_MUNGED" >/dev/null && live_pid "$PID_CTLD" >/dev/null &&
        all_slurmd_live && ctld_answers
}

any_running() {
    live_pid "$PID_MUNGED" >/dev/null || live_pid "$PID_CTLD" >/dev/null || any_slurmd_live
}

install_packages() {
    local missing=()
    command -v munged >/dev/null 2>&1 || missing+=(munge)
    command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
    command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
    command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
    [ "$NODES" -eq 1 ] || command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    [ "${#missing[@]}" -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        err "missing ${missing[*]} and there is no apt-get to install them; install ${PACKAGES[*]}"
        exit 1
    fi
    say "installing ${PACKAGES[*]} (apt-get)"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${PACKAGES[@]}"; } >"${TMPDIR:-/tmp}/selfplay-slurm-apt.log" 2>&1; then
        err "apt-get could not install ${PACKAGES[*]}; see ${TMPDIR:-/tmp}/selfplay-slurm-apt.log"
        tail -n 5 "${TMPDIR:-/tmp}/selfplay-slurm-apt.log" >&2 || true
        exit 1
    fi
}

# the network of a --nodes N cluster: a bridge on this machine (the controller's address, .1)
# and per node a network namespace with one end of a veth pair (address .1+i) whose other end is
# on the bridge. What runs on a node has the node's name as hostname and an /etc/hosts
# (/etc/netns/<ns>/hosts) naming every node, so that a process finds its own address and the
# other nodes' by name, as on a real cluster (gloo, srun and torch's rendezvous do).
netns_of() { echo "selfplay-$TAG-n$1"; }

# run a command on node $1: in its network namespace, with its /etc/hosts, under its own
# hostname (node$1: torch's rendezvous tells the other nodes where its store is by hostname).
# Not `ip netns exec`, which also mounts a fresh /sys, hiding /sys/fs/cgroup from slurmd
on_node() {
    local ns
    ns="$(netns_of "$1")"
    nsenter --net="/run/netns/$ns" unshare --mount --uts --propagation private \
        sh -c 'mount --bind "$0" /etc/hosts && hostname "$1" && shift && exec "$@"' \
        "/etc/netns/$ns/hosts" "node$1" "${@:2}"
}

made() { echo "$1 $2" >>"$MADE"; }

make_network() {
    local i ns host_if subnet="" a b
    if ! command -v ip >/dev/null 2>&1 || ! ip netns list >/dev/null 2>&1; then
        err "cannot list network namespaces here (ip netns): a multi-node cluster needs them"
        exit 3
    fi
    # a free /24 of 10.0.0.0/8, from the tag (then the next ones): no route of this machine in it
    a=$((0x${TAG:0:2} % 100 + 100))
    b=$((0x${TAG:2:2}))
    for ((i = 0; i < 256; i++)); do
        if ! ip -o route show | grep -q "^10\.$a\.$(((b + i) % 256))\."; then
            subnet="10.$a.$(((b + i) % 256))"
            break
        fi
    done
    [ -n "$subnet" ] || {
        err "no free 10.$a.x.0/24 subnet for the nodes"
        exit 3
    }
    CTLD_ADDR="$subnet.1"
    local bridge="sp$TAG-br"
    : >"$MADE"
    { ip link add "$bridge" type bridge && made link "$bridge" &&
        ip addr add "$CTLD_ADDR/24" dev "$bridge" && ip link set "$bridge" up; } \
        2>"$LOG_DIR/network.log" ||
        undo_network_and_fail "cannot make the bridge $bridge: $(tail -n 1 "$LOG_DIR/network.log")"
    local hosts="127.0.0.1 localhost"
    for ((i = 1; i <= NODES; i++)); do
        NODE_ADDR[i]="$subnet.$((i + 1))"
        hosts+=$'\n'"${NODE_ADDR[i]} node$i"
    done
    for ((i = 1; i <= NODES; i++)); do
        ns="$(netns_of "$i")"
        host_if="sp$TAG-h$i"
        { ip netns add "$ns" && made netns "$ns" &&
            ip link add "$host_if" type veth peer name sp0 netns "$ns" && made link "$host_if" &&
            ip link set "$host_if" master "$bridge" up &&
            ip -n "$ns" addr add "${NODE_ADDR[i]}/24" dev sp0 &&
            ip -n "$ns" link set sp0 up && ip -n "$ns" link set lo up; } \
            2>>"$LOG_DIR/network.log" ||
            undo_network_and_fail "cannot make node$i's namespace $ns: $(tail -n 1 "$LOG_DIR/network.log")"
        if [ ! -d /etc/netns ]; then # ours to remove when empty again (other clusters share it)
            mkdir /etc/netns && made emptydir /etc/netns
        fi
        mkdir -p "/etc/netns/$ns" && made dir "/etc/netns/$ns"
        echo "$hosts" >"/etc/netns/$ns/hosts"
    done
}

# remove what `made` recorded, newest first (a veth goes with its namespace; a missing one is fine)
undo_network() {
    [ -f "$MADE" ] || return 0
    local kind name
    while read -r kind name; do
        case "$kind" in
            netns) ip netns delete "$name" 2>/dev/null || true ;;
            link) ip link delete "$name" 2>/dev/null || true ;;
            dir) rm -rf "$name" ;;
            emptydir) rmdir "$name" 2>/dev/null || true ;;
        esac
    done < <(tac "$MADE")
    rm -f "$MADE"
}

undo_network_and_fail() {
    err "$1"
    undo_network
    exit 3
}

write_config() {
    local node cpus mem_total mem
    node="$(hostname -s)"
    # `slurmd -C` prints this machine as a NodeName line: CPUs=.. RealMemory=.. (MB)
    local probe
    probe="$(slurmd -C 2>/dev/null | head -n 1)"
    cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$probe")"
    mem_total="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$probe")"
    cpus="${cpus:-$(nproc)}"
    mem_total="${mem_total:-1024}"
    mem=$((mem_total * 9 / 10))

    local ctld_addr=127.0.0.1 node_lines partition_nodes i
    if [ "$NODES" -eq 1 ]; then
        NODE_NAMES=("$node")
        node_lines="NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN"
        partition_nodes="$node"
    else
        ctld_addr="$CTLD_ADDR"
        NODE_NAMES=()
        node_lines="# every node is this machine: each offers all of its CPUs and memory"
        for ((i = 1; i <= NODES; i++)); do
            NODE_NAMES+=("node$i")
            node_lines+=$'\n'"NodeName=node$i NodeAddr=${NODE_ADDR[i]} CPUs=$cpus RealMemory=$mem State=UNKNOWN"
        done
        partition_nodes="node[1-$NODES]"
    fi

    cat >"$CONF" <<EOF
$CONF_MARKER: a $NODES-node cluster on this machine; rewritten by every start
ClusterName=selfplay
SlurmctldHost=$node($ctld_addr)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again once its launch credential has expired (cred_expire, 120 s by
# default): 15 s keeps a requeue real and a test short
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=15
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool/%n
SlurmctldPidFile=$PID_CTLD
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in containers: track processes through /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# cores and memory are consumable, so jobs share a node; without a default memory per CPU
# every job would ask for the whole node's memory and jobs would run one at a time
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
# schedule a submitted batch job at once (the default waits for the next 3 s tick), and look at
# pending jobs every 2 s (60 s by default), so a requeued job starts once it may
SchedulerParameters=batch_sched_delay=0,sched_interval=2
# cancel a job whose dependency can never be met (afterok on a failed job), instead of leaving
# it pending forever (in 22.05 this is a DependencyParameters option, not a SchedulerParameters one)
DependencyParameters=kill_invalid_depend
KillWait=5
MailProg=/bin/true
ReturnToService=2
# no slurmdbd here, so no sacct: keep finished jobs in slurmctld (scontrol show job) for a day,
# and log every finished job to a text file
MinJobAge=86400
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE_DIR/jobcomp.log
$node_lines
PartitionName=$PARTITION Nodes=$partition_nodes Default=YES MaxTime=04:00:00 State=UP
EOF
}

# the state directory, its folders and the munge key
prepare_state_dir() {
    mkdir -p "$STATE_DIR" "$LOG_DIR" "$RUN_DIR" "$MUNGE_DIR" "$STATE_DIR/ctld" "$STATE_DIR/spool"
    # munged wants its socket's folder (and the folders above it) open to all: jobs of every
    # user reach it; the key stays private
    chmod 0755 "$STATE_DIR" "$RUN_DIR"
    chmod 0700 "$MUNGE_DIR"
    if [ ! -s "$MUNGE_KEY" ]; then
        (umask 077 && head -c 1024 /dev/urandom >"$MUNGE_KEY")
    fi
    chmod 0400 "$MUNGE_KEY"
}

fail_start() {
    err "$1"
    err "daemon logs: $LOGS"
    local f
    for f in "$LOG_DIR/munged.log" "$LOG_DIR/slurmctld.log" "$LOG_DIR"/slurmd-*.log; do
        if [ -s "$f" ]; then
            err "--- last lines of $f"
            tail -n 8 "$f" >&2 || true
        fi
    done
    stop_daemons quiet
    undo_network
    exit 2
}

# wait (bounded) until a pid file names a live process
wait_pid_file() {
    local file="$1" what="$2" deadline=$((SECONDS + WAIT_S))
    until live_pid "$file" >/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || fail_start "$what did not start within ${WAIT_S}s"
        sleep 0.2
    done
}

cmd_start() {
    if is_up; then
        say "already up ($STATE_DIR)"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        err "needs root (installs packages; slurmd runs jobs as their users); run it with sudo"
        exit 1
    fi
    install_packages
    if any_running; then
        say "partly up in $STATE_DIR: stopping what runs before starting again"
        stop_daemons quiet
    fi
    undo_network # what an earlier start made and no stop removed
    local t0=$SECONDS port
    for port in "$CTLD_PORT" "$SLURMD_PORT"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            err "port $port is in use (another SLURM cluster?); pick free ones with"
            err "SELFPLAY_SLURMCTLD_PORT / SELFPLAY_SLURMD_PORT (now $CTLD_PORT / $SLURMD_PORT)"
            exit 2
        fi
    done
    prepare_state_dir
    rm -f "$PID_MUNGED" "$PID_CTLD" "$RUN_DIR"/slurmd-*.pid
    [ "$NODES" -eq 1 ] || make_network
    write_config
    export SLURM_CONF="$CONF"

    munged --key-file="$MUNGE_KEY" --socket="$MUNGE_SOCKET" --pid-file="$PID_MUNGED" \
        --log-file="$LOG_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" ||
        fail_start "munged did not start"
    wait_pid_file "$PID_MUNGED" munged

    slurmctld -f "$CONF" || fail_start "slurmctld did not start"
    wait_pid_file "$PID_CTLD" slurmctld
    local deadline=$((SECONDS + WAIT_S))
    until ctld_answers; do
        [ "$SECONDS" -lt "$deadline" ] || fail_start "slurmctld did not answer 'scontrol ping' within ${WAIT_S}s"
        live_pid "$PID_CTLD" >/dev/null || fail_start "slurmctld exited"
        sleep 0.2
    done

    local name i=0
    for name in "${NODE_NAMES[@]}"; do
        i=$((i + 1))
        mkdir -p "$STATE_DIR/spool/$name"
        if [ "$NODES" -eq 1 ]; then
            slurmd -f "$CONF" -N "$name" || fail_start "slurmd did not start"
        else
            on_node "$i" slurmd -f "$CONF" -N "$name" ||
                fail_start "slurmd of $name did not start"
        fi
        wait_pid_file "$RUN_DIR/slurmd-$name.pid" "slurmd of $name"
    done
    local state
    for name in "${NODE_NAMES[@]}"; do
        state=""
        until [[ "$state" == IDLE* ]]; do
            [ "$SECONDS" -lt "$deadline" ] ||
                fail_start "node $name not idle within ${WAIT_S}s (state: ${state:-none})"
            live_pid "$RUN_DIR/slurmd-$name.pid" >/dev/null || fail_start "slurmd of $name exited"
            sleep 0.2
            state="$(timeout 10 scontrol show node -o "$name" 2>/dev/null |
                sed -n 's/.* State=\([^ ]*\).*/\1/p')" || state=""
        done
    done
    if [ "$NODES" -eq 1 ]; then
        say "up in $((SECONDS - t0))s: node ${NODE_NAMES[0]}, partition $PARTITION, state in $STATE_DIR"
    else
        say "up in $((SECONDS - t0))s: nodes ${NODE_NAMES[*]} in network namespaces" \
            "$(netns_of 1)..$NODES, controller at $CTLD_ADDR; partition $PARTITION; state in $STATE_DIR"
    fi
    say "logs: $LOGS; finished jobs: $STATE_DIR/jobcomp.log"
    say "point the SLURM clients at it with:"
    echo "export SLURM_CONF=$CONF"
}

# TERM the daemons named by pid files, all at once (each takes 1-2 s to shut down), wait
# (bounded), KILL what is left; remove the pid files
stop_pids() {
    local file pid i names=() pids=()
    for file in "$@"; do
        if pid="$(live_pid "$file")"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$(basename "$file" .pid)")
        fi
    done
    for ((i = 0; i < ${#pids[@]}; i++)); do
        local deadline=$((SECONDS + 10))
        while kill -0 "${pids[$i]}" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.1
        done
        if kill -0 "${pids[$i]}" 2>/dev/null; then
            err "${names[$i]} (pid ${pids[$i]}) still runs 10s after TERM: KILL"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
    done
    rm -f "$@"
}

stop_daemons() {
    # cancel the jobs first, so slurmd's job steps end with the cluster (bounded)
    if [ "${1:-}" != quiet ] && live_pid "$PID_CTLD" >/dev/null && ctld_answers; then
        SLURM_CONF="$CONF" timeout 10 scancel --partition="$PARTITION" 2>/dev/null || true
        local deadline=$((SECONDS + 15)) left
        while [ "$SECONDS" -lt "$deadline" ]; do
            left="$(SLURM_CONF="$CONF" timeout 10 squeue -h -o %i 2>/dev/null | wc -l)" || left=0
            [ "$left" -eq 0 ] && break
            sleep 0.5
        done
    fi
    # shellcheck disable=SC2046  # one word per pid file
    stop_pids $(slurmd_pid_files) "$PID_CTLD" "$PID_MUNGED"
}

cmd_stop() {
    if ! any_running; then
        say "not running ($STATE_DIR)"
        rm -f "$PID_MUNGED" "$PID_CTLD" "$RUN_DIR"/slurmd-*.pid
        undo_network
        return 0
    fi
    local t0=$SECONDS
    stop_daemons
    undo_network
    say "stopped in $((SECONDS - t0))s ($STATE_DIR)"
}

cmd_status() {
    if is_up; then
        say "up ($STATE_DIR)"
        SLURM_CONF="$CONF" timeout 20 sinfo || true
        return 0
    fi
    if any_running; then
        say "down: some daemons run but the cluster does not answer ($STATE_DIR; logs: $LOGS)"
    else
        say "down ($STATE_DIR)"
    fi
    return 1
}

[ $# -ge 1 ] || usage
cmd="$1"
shift
NODES=1
if [ "$cmd" = start ] && [ "${1:-}" = --nodes ]; then
    [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || usage
    NODES="$2"
    shift 2
fi
[ $# -le 1 ] || usage
set_paths "${1:-}"
declare -a NODE_ADDR NODE_NAMES
case "$cmd" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) usage ;;
esac
