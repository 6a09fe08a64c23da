#!/usr/bin/env bash
# A real SLURM cluster of two emulated nodes (node1, node2) on this machine, for CI and for developers who want to
# run slurm/*.sh before touching a real cluster. Needs root and Debian/Ubuntu (apt); no systemd needed.
#
#   tests/slurm/local_cluster.sh [start]   install what is missing, write the config, start munged, slurmctld and
#                                          two slurmd; idempotent (a second call only checks), ~0.5 s when running
#   tests/slurm/local_cluster.sh stop      stop the daemons this script started
#   tests/slurm/local_cluster.sh status    sinfo
#
# Each node gets one fake GPU (a character device that is /dev/null underneath) so templates that ask for
# `--gpus-per-node` schedule and see CUDA_VISIBLE_DEVICES; torch still sees no GPU. The scheduler is tuned to restart
# a requeued job within ~12 s instead of ~150 s (facts: ../shared/notes/slurm-local.md in the lead's workspace).
set -euo pipefail

NODES=(node1 node2)
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
SPOOL=/var/spool/slurmd
STATE=/var/spool/slurmctld
CTLD_PORT=6817
FIRST_SLURMD_PORT=6821

log() { echo "local_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

alive() {  # alive PIDFILE: true when the process named in the file runs
  [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die "${missing[*]} missing and no apt-get here: install SLURM and munge yourself"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } ||
    die "apt-get could not install ${missing[*]}"
}

write_if_changed() {  # write_if_changed FILE: stdin -> FILE; returns 0 when the file changed
  local tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [[ -f "$1" ]] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
  chmod 644 "$tmp" && mv "$tmp" "$1"
}

write_config() {  # returns 0 when a config file changed (running daemons must then restart)
  local cpus mem changed=1 i line
  cpus=$(nproc)
  # each emulated node may claim at most its share of the real memory (slurmd refuses a node that claims more)
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$(( ${mem:-2048} / ${#NODES[@]} ))
  mkdir -p "$CONF_DIR" "$LOG_DIR" "$STATE"
  {
    cat <<EOF
# written by tests/slurm/local_cluster.sh: two emulated nodes on one host, no accounting, fast requeue
ClusterName=gptds
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=5,bf_interval=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=600
MailProg=/bin/true
GresTypes=gpu
EOF
    for i in "${!NODES[@]}"; do
      echo "NodeName=${NODES[$i]} NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((FIRST_SLURMD_PORT + i))" \
        "CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP"
  } | write_if_changed "$CONF_DIR/slurm.conf" && changed=0
  for i in "${!NODES[@]}"; do
    line="NodeName=${NODES[$i]} Name=gpu File=/dev/gptds_fake_gpu$i"
    echo "$line"
  done | write_if_changed "$CONF_DIR/gres.conf" && changed=0
  return $changed
}

setup_host() {
  local i node
  for node in "${NODES[@]}"; do  # node names must resolve, or MASTER_ADDR from the node list fails
    grep -Eq "^[^#]*[[:space:]]$node([[:space:]]|\$)" /etc/hosts || echo "127.0.0.1 $node" >>/etc/hosts
  done
  for i in "${!NODES[@]}"; do  # gres needs a character device; major 1 minor 3 is /dev/null
    [[ -c /dev/gptds_fake_gpu$i ]] || mknod -m 666 "/dev/gptds_fake_gpu$i" c 1 3
  done
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  [[ -s /etc/munge/munge.key ]] || runuser -u munge -- /usr/sbin/mungekey --create 2>/dev/null ||
    die "no /etc/munge/munge.key and mungekey could not create one"
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "munged does not answer (see /var/log/munge/munged.log)"
}

stop_daemons() {
  local node pidfile
  for node in "${NODES[@]}"; do
    pidfile=/run/slurmd-$node.pid
    alive "$pidfile" && kill "$(cat "$pidfile")"
  done
  alive /run/slurmctld.pid && kill "$(cat /run/slurmctld.pid)"
  for _ in $(seq 50); do
    alive /run/slurmctld.pid || { for node in "${NODES[@]}"; do alive "/run/slurmd-$node.pid" && continue 2; done; return 0; }
    sleep 0.1
  done
  die "SLURM daemons did not stop"
}

start_daemons() {
  local node
  # -c: start with no saved jobs (a fresh test cluster); -i: ignore state files from an older config
  alive /run/slurmctld.pid || slurmctld -i -c
  for node in "${NODES[@]}"; do
    mkdir -p "$SPOOL/$node"
    alive "/run/slurmd-$node.pid" || slurmd -N "$node"
  done
}

wait_idle() {
  local states
  for _ in $(seq 150); do
    states=$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u || true)
    if [[ $(grep -cE ' (idle|mix|alloc)' <<<"$states") -ge ${#NODES[@]} ]]; then return 0; fi
    if grep -qE ' (down|drain|drng|inval)' <<<"$states"; then
      scontrol update NodeName="$(IFS=,; echo "${NODES[*]}")" State=RESUME 2>/dev/null || true
    fi
    sleep 0.2
  done
  die "nodes not idle after 30 s: ${states:-no answer from slurmctld}; see $LOG_DIR/"
}

main() {
  local cmd=${1:-start}
  case $cmd in
    start)
      [[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts daemons)"
      install_packages
      setup_host
      if write_config; then stop_daemons; fi
      start_munge
      start_daemons
      wait_idle
      log "up: $(sinfo -h -N -o '%N=%t' | sort -u | tr '\n' ' ')" ;;
    stop) stop_daemons ;;
    status) sinfo -N ;;
    *) die "usage: $0 [start|stop|status]" ;;
  esac
}

main "$@"
