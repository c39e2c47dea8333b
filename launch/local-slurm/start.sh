#!/usr/bin/env bash
# Bring up a real single-node slurm on this machine (munged + slurmctld + slurmd on 127.0.0.1), so the launch
# scripts can be tried on a workstation and tested in CI. Idempotent: a second call sees the daemons it started
# (pid files under $MMED_SLURM_DIR) and returns at once. Needs root; installs Debian's slurm packages if missing.
#
#   launch/local-slurm/start.sh            # then: sinfo; sbatch ...; launch/local-slurm/stop.sh
#
# Facts this relies on: the node is named `localhost` with NodeAddr=127.0.0.1 and slurmd is started with
# `-N localhost`; proctrack/linuxproc + task/none need no cgroups; munged runs as user munge with /run/munge and
# a 0400 key; a (re)started slurmctld clears its saved queue (-c) and a drained node is resumed, so jobs of an
# earlier life of this cluster never hold it; AuthInfo=cred_expire=10 (else a requeued job waits 120 s);
# MinJobAge=5 (else `sbatch --wait` polls every 32 s); batch_sched_delay=0; CPUs above nproc need
# SlurmdParameters=config_overrides. No GRES is configured as a count-only GPU GRES (no device files): jobs that
# request GPUs are accepted, and DEVICE=cpu runs them on CPUs over gloo.
set -euo pipefail

DIR="${MMED_SLURM_DIR:-/tmp/mmed-slurm}"
CONF="${SLURM_CONF:-/etc/slurm/slurm.conf}"
CPUS="${MMED_SLURM_CPUS:-8}"
# count-only GPU GRES (no device files): lets scripts that request GPUs be submitted; DEVICE=cpu runs on CPU
GPUS="${MMED_SLURM_GPUS:-8}"
MARK="# written by megatron-mmed launch/local-slurm/start.sh"

die() { echo "local-slurm: $*" >&2; exit 1; }
alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
# a node drained or down (e.g. its jobs lost munge when it was stopped under them) takes no jobs until resumed
resume() {
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(drain|drng|drained|down|fail)'; then
    scontrol update NodeName=localhost State=RESUME 2>/dev/null || true
  fi
}

if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && alive "$DIR/munged.pid"; then
  resume
  echo "local-slurm: already running (state in $DIR)"
  exit 0
fi
[[ $(id -u) -eq 0 ]] || die "needs root (it starts munged/slurmctld/slurmd)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  echo "local-slurm: installing slurmd slurmctld slurm-client munge (Debian packages, ~4 MB)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed (no package registry reachable?)"
  apt-get install -y -qq --no-install-recommends slurmd slurmctld slurm-client munge >/dev/null \
    || die "apt-get install of slurm failed"
fi

mkdir -p "$DIR"/{state,spool,log}
# munge: key readable only by munge, runtime dir owned by munge, daemon running as munge
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! alive "$DIR/munged.pid"; then
  rm -f /run/munge/munge.socket.2 /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 50); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.1; done
  cp /run/munge/munged.pid "$DIR/munged.pid"
fi

if [[ -f "$CONF" ]] && ! grep -qF "$MARK" "$CONF"; then
  die "$CONF exists and was not written by this script; set SLURM_CONF to another path to use a local slurm"
fi
mkdir -p "$(dirname "$CONF")"
GRES_CONF="$(dirname "$CONF")/gres.conf"
if [[ -f "$GRES_CONF" ]] && ! grep -qF "$MARK" "$GRES_CONF"; then
  die "$GRES_CONF exists and was not written by this script"
fi
mkdir -p "$DIR/dev"
for ((i = 0; i < GPUS; i++)); do touch "$DIR/dev/gpu$i"; done
printf '%s\nAutoDetect=off\nName=gpu File=%s/dev/gpu[0-%s]\n' "$MARK" "$DIR" "$((GPUS - 1))" > "$GRES_CONF"
cat > "$CONF" <<CONF
$MARK
ClusterName=mmedlocal
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MinJobAge=5
ReturnToService=2
JobRequeue=1
KillWait=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF

export SLURM_CONF="$CONF"
# -c: a (re)started controller begins with an empty queue; jobs of an earlier life of this local cluster
# (killed with it, or left pending) would otherwise come back and hold the node
alive "$DIR/slurmctld.pid" || /usr/sbin/slurmctld -c
alive "$DIR/slurmd.pid" || /usr/sbin/slurmd -N localhost
for _ in $(seq 100); do
  resume
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
    echo "local-slurm: up (node localhost, $CPUS CPUs, state in $DIR, config $CONF)"
    exit 0
  fi
  sleep 0.2
done
die "slurm did not come up; see $DIR/log/slurmctld.log and $DIR/log/slurmd.log"
