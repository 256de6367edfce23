#!/usr/bin/env bash
# slurm-down.sh - stop the test cluster started by slurm-up.sh (same $SLURM_TEST_DIR), by recorded PIDs only.
#  1. cancel all jobs of that cluster (so slurmd/slurmstepd clean up job processes),
#  2. SIGTERM each daemon from $SLURM_TEST_DIR/pids/*.pid (checking the PID still is
#     that daemon), wait, SIGKILL if needed,
#  3. kill any leftover process that still holds a file under $SLURM_TEST_DIR
#     (stray slurmstepd of a killed slurmd) - again by PID.
# Idempotent: safe to run when nothing is running.  SLURM_TEST_PURGE=1 also deletes the dir.
set -uo pipefail
DIR=${SLURM_TEST_DIR:-${TMPDIR:-/tmp}/structvit-slurm}
case "$DIR" in /*/*) ;; *) echo "SLURM_TEST_DIR must be an absolute path at least two levels deep (got '$DIR')" >&2; exit 2;; esac
log() { echo "[slurm-down $(date +%T)] $*" >&2; }
alive() { local p=$1 s; [ -n "$p" ] && [ -r "/proc/$p/stat" ] || return 1; s=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) || return 1; [ "$s" != Z ]; }

[ -d "$DIR" ] || { log "nothing at $DIR"; exit 0; }
export SLURM_CONF=$DIR/etc/slurm.conf

# 1. cancel jobs (bounded)
if [ -f "$SLURM_CONF" ] && [ -s "$DIR/pids/slurmctld.pid" ] && alive "$(cat "$DIR/pids/slurmctld.pid")"; then
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    timeout 10 scancel --full $jobs 2>/dev/null || true
    for _ in $(seq 1 150); do [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.1; done
  fi
fi

# 2. daemons, in reverse start order
stop_pidfile() { # stop_pidfile <file> <expected comm>
  local f=$1 comm=$2 p
  [ -s "$f" ] || return 0
  p=$(cat "$f")
  if alive "$p" && [ "$(cat /proc/$p/comm 2>/dev/null)" = "$comm" ]; then
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 1 150); do alive "$p" || break; sleep 0.1; done
    if alive "$p"; then log "$comm ($p) ignored SIGTERM, sending SIGKILL"; kill -KILL "$p" 2>/dev/null; sleep 0.2; fi
    log "stopped $comm (pid $p)"
  fi
  rm -f "$f"
}
for f in "$DIR"/pids/slurmd-*.pid; do [ -e "$f" ] && stop_pidfile "$f" slurmd; done
stop_pidfile "$DIR/pids/slurmctld.pid" slurmctld
stop_pidfile "$DIR/pids/slurmdbd.pid" slurmdbd
stop_pidfile "$DIR/pids/mariadbd.pid" mariadbd
stop_pidfile "$DIR/pids/munged.pid" munged

# 3. stray Slurm/munge/mariadb processes still holding files in $DIR (e.g. a slurmstepd whose slurmd died: it
#    keeps the slurmd log open) - kill them and their descendants (the job's tasks), by PID.
descendants() { local p=$1 c; for c in $(ps -e -o pid=,ppid= | awk -v p="$p" '$2==p{print $1}'); do descendants "$c"; echo "$c"; done; }
real=$(readlink -f "$DIR")
for p in $(ls /proc | grep -E '^[0-9]+$'); do
  [ "$p" = $$ ] && continue
  case "$(cat /proc/$p/comm 2>/dev/null)" in slurmstepd|slurmd|slurmctld|slurmdbd|munged|mariadbd) ;; *) continue;; esac
  if ls -l /proc/$p/fd 2>/dev/null | grep -q -- "-> $real/"; then
    alive "$p" || continue
    kids=$(descendants "$p" | tr '\n' ' ')
    log "killing stray $(cat /proc/$p/comm 2>/dev/null) (pid $p) holding files in $real${kids:+, and its descendants $kids}"
    for k in $kids; do kill -KILL "$k" 2>/dev/null || true; done
    kill -KILL "$p" 2>/dev/null || true
  fi
done

rm -f "$DIR/env.sh"
[ "${SLURM_TEST_PURGE:-0}" = 1 ] && rm -rf "$DIR"
log "down"
exit 0
