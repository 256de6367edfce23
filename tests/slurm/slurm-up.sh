#!/usr/bin/env bash
# slurm-up.sh - start a throw-away but real Slurm cluster on this one machine, for the launcher tests
# (Debian 12, Slurm 22.05 from apt; must run as root).
#
#  * N emulated compute nodes (node1..nodeN): one `slurmd -N nodeK` each, all at NodeAddr=127.0.0.1
#    with their own Port=, plus one slurmctld. Nodes may declare more CPUs than the host has
#    (SlurmdParameters=config_overrides), so a 2-core machine can host 2 nodes x 4 CPUs.
#  * A private munged (own key and socket under $SLURM_TEST_DIR): a system munge is left alone.
#    SLURM_TEST_AUTH=none uses auth/none instead.
#  * Accounting (SLURM_TEST_ACCOUNTING=1, the default): a private MariaDB + slurmdbd. submitit reads job
#    states with sacct; without it a job killed without a result is never seen as finished.
#  * No cgroups, no systemd: proctrack/linuxproc + task/none.
#  * Partitions: `debug` (the default, every CPU node, PriorityTier 1, PreemptMode=REQUEUE with
#    GraceTime=$SLURM_TEST_GRACE) and `urgent` (the same nodes, PriorityTier 2): a job in `urgent` that
#    needs nodes a `debug` job holds preempts it the way a production cluster does (SIGCONT + SIGTERM,
#    grace time, kill, requeue). With SLURM_TEST_GPU_NODES > 0, that many extra nodes with fake GPUs
#    (SLURM_TEST_GPUS per node, char devices made with mknod) form the partition `gpu`.
#  * Short credential lifetime and a 1 s scheduler interval, so a requeued job starts again in seconds.
#  * Everything (config, state, logs, pid files) lives in $SLURM_TEST_DIR; daemons listen on 127.0.0.1.
#
# Idempotent: a healthy cluster with the same parameters is reused; a stale or half-started one is
# torn down and started again. Prints `export SLURM_CONF=...` on stdout (everything else on stderr).
# Usage:   eval "$(bash tests/slurm/slurm-up.sh)"      Stop:  bash tests/slurm/slurm-down.sh
set -euo pipefail

DIR=${SLURM_TEST_DIR:-${TMPDIR:-/tmp}/structvit-slurm}
NODES=${SLURM_TEST_NODES:-2}                 # number of emulated nodes
CPUS=${SLURM_TEST_CPUS:-4}                   # CPUs declared per node (may exceed real cores)
MEM_MB=${SLURM_TEST_MEM_MB:-4000}            # RealMemory declared per node (<= real RAM)
ACCOUNTING=${SLURM_TEST_ACCOUNTING:-1}       # 1: MariaDB + slurmdbd (sacct works); 0: none
AUTH=${SLURM_TEST_AUTH:-munge}               # munge | none
GPUS=${SLURM_TEST_GPUS:-0}                   # fake GPUs (GRES gpu) per GPU node: char devices made with mknod
GPU_NODES=${SLURM_TEST_GPU_NODES:-0}         # extra nodes gpu1..gpuM with $GPUS fake GPUs each (partition gpu)
GRACE=${SLURM_TEST_GRACE:-30}                # GraceTime of a preempted debug job, seconds
PORT=${SLURM_TEST_PORT_BASE:-16817}          # ctld=PORT, dbd=PORT+2, mariadb=PORT+3, nodeI=PORT+10+I
INSTALL=${SLURM_TEST_INSTALL:-1}             # 1: apt-get install missing packages
READY_TIMEOUT=${SLURM_TEST_READY_TIMEOUT:-60}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case "$DIR" in /*/*) ;; *) echo "SLURM_TEST_DIR must be an absolute path at least two levels deep (got '$DIR')" >&2; exit 2;; esac
PARAMS="nodes=$NODES gpunodes=$GPU_NODES cpus=$CPUS mem=$MEM_MB acct=$ACCOUNTING auth=$AUTH gpus=$GPUS grace=$GRACE port=$PORT"
ALL_NODES=$((NODES + GPU_NODES))
node_names() { for i in $(seq 1 "$NODES"); do echo "node$i"; done; for i in $(seq 1 "$GPU_NODES"); do echo "gpu$i"; done; }

log() { echo "[slurm-up $(date +%T)] $*" >&2; }
die() {
  log "ERROR: $*"
  for f in "$DIR"/log/*.log "$DIR"/munge/munged.log "$DIR"/db/mysqld.err; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
  SLURM_TEST_DIR=$DIR bash "$HERE/slurm-down.sh" || true     # leave nothing half-started
  exit 1
}

# pid is alive and not a zombie
alive() { local p=$1 s; [ -n "$p" ] && [ -r "/proc/$p/stat" ] || return 1; s=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) || return 1; [ "$s" != Z ]; }
pid_of() { [ -s "$1" ] && cat "$1" || true; }
wait_for() { # wait_for <seconds> <what> <cmd...>
  local t=$1 what=$2; shift 2; local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do [ $SECONDS -lt $end ] || die "timed out after ${t}s waiting for $what"; sleep 0.1; done
}

# ---------------------------------------------------------------- 0. already up?
if [ -f "$DIR/env.sh" ] && [ -f "$DIR/etc/slurm.conf" ]; then
  healthy=1
  [ "$(cat "$DIR/params" 2>/dev/null)" = "$PARAMS" ] || healthy=0
  for f in "$DIR"/pids/*.pid; do [ -e "$f" ] || { healthy=0; break; }; alive "$(pid_of "$f")" || { healthy=0; break; }; done
  if [ $healthy = 1 ] && SLURM_CONF=$DIR/etc/slurm.conf scontrol ping 2>/dev/null | grep -q 'is UP' \
     && [ "$(SLURM_CONF=$DIR/etc/slurm.conf sinfo -h -N -o '%N %T' 2>/dev/null | sort -u | grep -cE ' (idle|mixed|allocated)$')" -eq "$ALL_NODES" ]; then
    log "cluster in $DIR already up"; echo "export SLURM_CONF=$DIR/etc/slurm.conf"; exit 0
  fi
  log "stale/partial cluster (or other parameters) in $DIR: tearing it down first"
fi
[ -d "$DIR" ] && SLURM_TEST_DIR=$DIR bash "$HERE/slurm-down.sh" >&2 || true

T0=$SECONDS
# ---------------------------------------------------------------- 1. packages
need=()
command -v slurmctld >/dev/null || need+=(slurmctld)
command -v slurmd    >/dev/null || need+=(slurmd)
command -v sbatch    >/dev/null || need+=(slurm-client)
[ "$AUTH" = munge ] && { command -v munged >/dev/null || need+=(munge); }
if [ "$ACCOUNTING" = 1 ]; then
  command -v slurmdbd >/dev/null || need+=(slurmdbd)
  command -v mariadbd >/dev/null || need+=(mariadb-server)
fi
if [ ${#need[@]} -gt 0 ]; then
  [ "$INSTALL" = 1 ] || die "missing packages: ${need[*]}"
  log "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >&2
  # Debian's postinst may have started nothing (policy-rc.d/no systemd); we use our own instances anyway
fi
T1=$SECONDS

# ---------------------------------------------------------------- 2. layout + config
rm -rf "$DIR"
mkdir -p "$DIR"/{etc,state,log,pids,munge/run}
for name in $(node_names); do mkdir -p "$DIR/spool/$name"; done
chmod 755 "$DIR" "$DIR/munge" "$DIR/munge/run"

if [ "$AUTH" = munge ]; then
  AUTHCONF="AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/run/munge.socket,cred_expire=5"
else
  AUTHCONF="AuthType=auth/none
CredType=cred/none
AuthInfo=cred_expire=5"
fi
if [ "$ACCOUNTING" = 1 ]; then
  # AccountingStoragePass = munge socket used for slurmdbd connections (clients such as
  # sacct/sacctmgr otherwise use the default /run/munge/munge.socket.2, ignoring AuthInfo)
  ACCTCONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((PORT + 2))
$(if [ "$AUTH" = munge ]; then echo "AccountingStoragePass=$DIR/munge/run/munge.socket"; fi)
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
else
  ACCTCONF="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi

GRESCONF=""; NODEGRES=""
if [ "$GPU_NODES" -gt 0 ] && [ "$GPUS" -gt 0 ]; then
  GRESCONF="GresTypes=gpu"; NODEGRES="Gres=gpu:$GPUS"
  mkdir -p "$DIR/fakegpu"; echo "AutoDetect=off" > "$DIR/etc/gres.conf"
  for i in $(seq 1 "$GPU_NODES"); do
    for g in $(seq 0 $((GPUS - 1))); do mknod "$DIR/fakegpu/gpu${i}_gpu$g" c 1 3; done   # same dev as /dev/null
    echo "NodeName=gpu$i Name=gpu File=$DIR/fakegpu/gpu${i}_gpu[0-$((GPUS - 1))]" >> "$DIR/etc/gres.conf"
  done
fi

cat > "$DIR/etc/slurm.conf" <<EOF
# generated by tests/slurm/slurm-up.sh
ClusterName=testcluster
$GRESCONF
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 10))
SlurmUser=root
SlurmdUser=root
$AUTHCONF
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/pids/slurmctld.pid
SlurmdPidFile=$DIR/pids/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups / systemd needed
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
$ACCTCONF
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
Waittime=0
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
JobRequeue=1
EOF
for i in $(seq 1 "$NODES"); do
  echo "NodeName=node$i NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=$((PORT + 10 + i)) CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN" >> "$DIR/etc/slurm.conf"
done
for i in $(seq 1 "$GPU_NODES"); do
  echo "NodeName=gpu$i NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=$((PORT + 10 + NODES + i)) CPUs=$CPUS RealMemory=$MEM_MB $NODEGRES State=UNKNOWN" >> "$DIR/etc/slurm.conf"
done
cat >> "$DIR/etc/slurm.conf" <<EOF
PartitionName=debug Nodes=node[1-$NODES] Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=$GRACE
PartitionName=urgent Nodes=node[1-$NODES] MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
if [ "$GPU_NODES" -gt 0 ]; then
  echo "PartitionName=gpu Nodes=gpu[1-$GPU_NODES] MaxTime=INFINITE State=UP PriorityTier=1" >> "$DIR/etc/slurm.conf"
fi
export SLURM_CONF=$DIR/etc/slurm.conf

# ---------------------------------------------------------------- 3. munge
if [ "$AUTH" = munge ]; then
  mungekey -c -f -k "$DIR/munge/munge.key" 2>/dev/null || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 2>/dev/null
  chmod 600 "$DIR/munge/munge.key"
  munged -S "$DIR/munge/run/munge.socket" --key-file="$DIR/munge/munge.key" \
         --pid-file="$DIR/pids/munged.pid" --log-file="$DIR/munge/munged.log" \
         --seed-file="$DIR/munge/munged.seed" || die "munged failed to start"
  wait_for 10 munged bash -c "munge -S '$DIR/munge/run/munge.socket' -n | unmunge -S '$DIR/munge/run/munge.socket'"
fi

# ---------------------------------------------------------------- 4. mariadb + slurmdbd
if [ "$ACCOUNTING" = 1 ]; then
  mkdir -p "$DIR/db"
  mariadb-install-db --no-defaults --datadir="$DIR/db/data" --user=root \
      --auth-root-authentication-method=normal --skip-test-db > "$DIR/log/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed (see $DIR/log/mariadb-install.log)"
  setsid mariadbd --no-defaults --datadir="$DIR/db/data" --user=root --socket="$DIR/db/mysql.sock" \
      --port=$((PORT + 3)) --bind-address=127.0.0.1 --pid-file="$DIR/db/mysqld.pid" \
      --log-error="$DIR/db/mysqld.err" --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
      --innodb-lock-wait-timeout=900 < /dev/null > /dev/null 2>&1 &
  echo $! > "$DIR/pids/mariadbd.pid"
  wait_for 30 mariadb mariadb --no-defaults -S "$DIR/db/mysql.sock" -uroot -e 'select 1'
  cp "$DIR/db/mysqld.pid" "$DIR/pids/mariadbd.pid"
  mariadb --no-defaults -S "$DIR/db/mysql.sock" -uroot -e \
    "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  {
    if [ "$AUTH" = munge ]; then echo "AuthType=auth/munge"; echo "AuthInfo=socket=$DIR/munge/run/munge.socket"; else echo "AuthType=auth/none"; fi
    cat <<EOF
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/pids/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  } > "$DIR/etc/slurmdbd.conf"
  chmod 600 "$DIR/etc/slurmdbd.conf"
  slurmdbd || die "slurmdbd failed to start"       # finds slurmdbd.conf next to $SLURM_CONF
  wait_for 30 slurmdbd sacctmgr -n list cluster
fi

# ---------------------------------------------------------------- 5. slurmctld + slurmd x N
slurmctld || die "slurmctld failed to start"
wait_for 30 slurmctld bash -c "scontrol ping | grep -q 'is UP'"
for name in $(node_names); do slurmd -N "$name" || die "slurmd -N $name failed to start"; done
wait_for "$READY_TIMEOUT" "$ALL_NODES idle nodes" bash -c "[ \$(sinfo -h -N -o '%N %T' | sort -u | grep -c ' idle$') -eq $ALL_NODES ]"

echo "$PARAMS" > "$DIR/params"
echo "export SLURM_CONF=$DIR/etc/slurm.conf" > "$DIR/env.sh"
log "cluster up in $((SECONDS - T0))s (install $((T1 - T0))s): $(sinfo -h -N -o '%N:%T' | tr '\n' ' ')"
log "pids: $(for f in "$DIR"/pids/*.pid; do printf '%s=%s ' "$(basename "$f" .pid)" "$(cat "$f")"; done)"
echo "export SLURM_CONF=$DIR/etc/slurm.conf"
