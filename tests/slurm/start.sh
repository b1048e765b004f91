#!/usr/bin/env bash
# Bring up a real single-node Slurm (munge + slurmctld + slurmd) for the slurm-profile test.
# Installs Debian's munge and slurm-wlm if missing, writes /etc/slurm/slurm.conf (the plugin's job
# step strips SLURM_CONF, so the config must live there), starts the daemons in the background and
# records their PIDs in $STATE/pids for stop.sh. Job status is read with squeue (no slurmdbd), so
# MinJobAge is kept well above the plugin's status-check interval.
set -euo pipefail
STATE=${1:?usage: start.sh STATE_DIR}
mkdir -p "$STATE"/{spool,ctld,log}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  timeout -s KILL 300 apt-get update -qq
  timeout -s KILL 300 apt-get install -y -qq --no-install-recommends munge slurm-wlm >/dev/null
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
mkdir -p /etc/slurm
# MessageTimeout: clients give up on an unreachable controller after ~MessageTimeout-1 s (default
# 10, i.e. 9 s). The Slurm executor plugin asks scontrol for the config whenever snakemake starts,
# so once this test's daemons are stopped every local make run would otherwise wait 9 s for it.
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=rlvrci
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
MpiDefault=none
ReturnToService=2
MinJobAge=300
MessageTimeout=5
SchedulerType=sched/backfill
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF

# munge needs a key and its run/log folders owned by the daemon user (root here)
mkdir -p /etc/munge /var/run/munge /var/log/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chmod 400 /etc/munge/munge.key
munged --force --foreground --key-file=/etc/munge/munge.key >"$STATE/log/munged.log" 2>&1 &
echo $! > "$STATE/pids"
sleep 1
slurmctld -D -i >"$STATE/log/slurmctld.out" 2>&1 &
echo $! >> "$STATE/pids"
slurmd -D >"$STATE/log/slurmd.out" 2>&1 &
echo $! >> "$STATE/pids"

for _ in $(seq 60); do
  state=$(timeout 5 sinfo -h -o %T 2>/dev/null || true)
  if [ "$state" = "idle" ]; then echo "slurm up ($HOST, $CPUS cpus)"; exit 0; fi
  sleep 1
done
echo "slurm did not become idle; last state: '${state:-none}'" >&2
tail -20 "$STATE"/log/*.log "$STATE"/log/*.out >&2 || true
exit 1
