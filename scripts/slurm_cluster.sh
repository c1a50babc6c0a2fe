#!/usr/bin/env bash
# A real Slurm cluster of N nodes on this one host (munge, MariaDB + slurmdbd for sacct, slurmctld,
# and one slurmd per node, side by side: `slurmd -N n1`, `slurmd -N n2`, each with its own port,
# spool, pid file and log) from Debian packages, without systemd, for the tests. Needs root.
#
#   bash scripts/slurm_cluster.sh install     # apt packages (once per machine)
#   bash scripts/slurm_cluster.sh start [N]   # configure + start every daemon, wait for N idle nodes
#                                             # (N: default $KSSGAN_SLURM_NODES, else 2)
#   bash scripts/slurm_cluster.sh status
#   bash scripts/slurm_cluster.sh stop        # cancel jobs, stop every daemon, wait until they are gone
#
# Nodes are n1..nN; the names do not resolve and every node reports this host's name, so code
# takes a node's address from its NodeAddr (127.0.0.1 here), never from a host name lookup.
# State lives under /var/spool/slurm and /var/lib/mysql, logs under /var/log/slurm.
set -euo pipefail
ACTION=${1:-status}
NODES=${2:-${KSSGAN_SLURM_NODES:-2}}
HOST=$(hostname -s)
CPUS=$(nproc)
# Advertise more CPUs than there are (config_overrides) so multi-task test jobs fit on 2 cores.
NODE_CPUS=$(( CPUS < 8 ? 8 : CPUS ))
MEM_MB=$(awk -v n="$NODES" '/MemTotal/ {printf "%d", $2 / 1024 * 0.9 / n}' /proc/meminfo)
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
LOG=/var/log/slurm

need_root() { [ "$(id -u)" = 0 ] || { echo "slurm_cluster.sh: needs root" >&2; exit 2; }; }

install() {
  need_root
  if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null; then
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client slurmdbd munge mariadb-server \
    >/dev/null
}

write_config() {
  mkdir -p /etc/slurm /var/spool/slurm/ctld /var/spool/slurm/d "$LOG"
  cat > "$CONF" <<EOF
ClusterName=kssgan
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
AuthType=auth/munge
StateSaveLocation=/var/spool/slurm/ctld
SlurmdSpoolDir=/var/spool/slurm/d-%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
KillWait=5
InactiveLimit=0
MinJobAge=300
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4 LLN=YES
EOF
  for i in $(seq 1 "$NODES"); do
    echo "NodeName=n$i NodeHostname=${HOST} NodeAddr=127.0.0.1 Port=$(( 17000 + i )) CPUs=${NODE_CPUS}"\
" RealMemory=${MEM_MB} State=UNKNOWN" >> "$CONF"
    mkdir -p "/var/spool/slurm/d-n$i"
  done
  cat > "$DBD_CONF" <<EOF
AuthType=auth/munge
DbdHost=${HOST}
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DBD_CONF"
}

wait_for() {  # wait_for <seconds> <command…>
  local limit=$1; shift
  for _ in $(seq 1 $(( limit * 10 ))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "slurm_cluster.sh: timed out waiting for: $*" >&2
  return 1
}

running() { [ -f "$1" ] && alive "$(cat "$1")"; }

# A process that exited lingers as a zombie until it is reaped, and kill -0 still succeeds then.
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

gone() { ! alive "$1"; }

configured_nodes() { grep -c '^NodeName=' "$CONF" 2>/dev/null || echo 0; }

slurmd_pids() { ls /run/slurmd-*.pid /run/slurmd.pid 2>/dev/null || true; }

kill_and_wait() {  # kill_and_wait <pid file…>: stop each daemon, return once every one is gone
  local pids=()
  for pid in "$@"; do
    if running "$pid"; then pids+=("$(cat "$pid")"); kill "$(cat "$pid")" 2>/dev/null || true; fi
  done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 600); do gone "$p" && break; sleep 0.1; done
    gone "$p" || { echo "slurm_cluster.sh: daemon $p did not stop" >&2; return 1; }
  done
  STOPPED=${#pids[@]}
}

start() {
  need_root
  install
  if [ -f "$CONF" ] && { [ "$(configured_nodes)" != "$NODES" ] || ! grep -q '^NodeName=n1 ' "$CONF"; }; then
    # Another node layout was running: its nodes must not linger in slurmctld's saved state. The job
    # state stays: it holds the job id counter, and reused ids would collide in sacct's records.
    kill_and_wait $(slurmd_pids) /run/slurmctld.pid
    rm -f /var/spool/slurm/ctld/node_state* /var/spool/slurm/ctld/part_state*
  fi
  write_config
  # munge
  [ -f /etc/munge/munge.key ] || mungekey --create
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
  running /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged --force
  wait_for 10 sh -c 'munge -n | unmunge'
  # MariaDB for accounting (sacct is how submitit reads job states)
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if ! running /run/mysqld/mysqld.pid; then
    setsid mariadbd --user=mysql --skip-networking --pid-file=/run/mysqld/mysqld.pid \
      >"$LOG/mariadb.log" 2>&1 < /dev/null &
  fi
  wait_for 30 mariadb -e 'select 1'
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  running /run/slurmdbd.pid || slurmdbd
  wait_for 30 sacctmgr -n list cluster
  running /run/slurmctld.pid || slurmctld
  wait_for 30 scontrol ping
  for i in $(seq 1 "$NODES"); do
    running "/run/slurmd-n$i.pid" || slurmd -N "n$i"
  done
  wait_for 60 sh -c "[ \$(sinfo -h -N -o '%N %T' | grep -cE 'idle|mixed|alloc') -ge $NODES ]"
  echo "slurm cluster up: $(sinfo -h -o '%P %D %T %c CPUs') ($(sinfo -h -N -o '%N' | sort -u | tr '\n' ' '))"
}

stop() {
  need_root
  command -v scancel >/dev/null && scancel --user=root 2>/dev/null || true
  kill_and_wait $(slurmd_pids) /run/slurmctld.pid /run/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid
  echo "slurm cluster stopped (${STOPPED} daemons)"
}

status() {
  for pid in /run/munge/munged.pid /run/mysqld/mysqld.pid /run/slurmdbd.pid /run/slurmctld.pid $(slurmd_pids); do
    if running "$pid"; then echo "up    $pid"; else echo "down  $pid"; fi
  done
  command -v sinfo >/dev/null && sinfo 2>/dev/null || true
}

case "$ACTION" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
