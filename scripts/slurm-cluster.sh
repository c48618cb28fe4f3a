#!/usr/bin/env bash
# A real one-node Slurm cluster on loopback, everything (config, state, logs, database) inside DIR.
#
#   scripts/slurm-cluster.sh start  DIR [--max-array-size N] [--max-job-count N] [--port-base P]
#   scripts/slurm-cluster.sh stop   DIR
#   scripts/slurm-cluster.sh status DIR
#
# `start` brings up, in this order: munged, MariaDB, slurmdbd (accounting, so `sacct` works),
# slurmctld and slurmd, and returns once `sinfo` shows the node idle and `sacct` answers; it prints
# the path of DIR/env.sh, which clients source (it exports SLURM_CONF=DIR/slurm.conf). `start` on
# a DIR whose cluster runs is a no-op, or, with another --max-array-size or --max-job-count, restarts
# slurmctld with them (running and queued jobs survive). MaxJobCount defaults to
# max(4 * MaxArraySize, 10000). Association limits are enforced (AccountingStorageEnforce=limits), as
# on real clusters: `sacctmgr -i modify user root set MaxSubmitJobs=N` takes effect at once. `start` after `stop` on the same DIR resumes its state and
# accounting history; on a fresh DIR it starts from scratch.
# `stop` cancels the cluster's jobs, then ends every daemon by the pid in its pid file and waits
# for it to exit. `status` reports the daemons (exit 0: all running, 3: none, 1: some).
#
# Facts this relies on are in ../shared/slurm-dev-cluster.md, beside the repository (verified on Debian 12 / Slurm 22.05
# in a root container without systemd or cgroups). Packages, as CI installs them:
#   DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge slurmdbd mariadb-server
#
# Everything lives in DIR except munge:
#  - munged must listen on the standard socket /run/munge/munge.socket.2: Slurm 22.05 ignores
#    AuthInfo=socket=... on its connections to slurmdbd (sacctmgr fails with "Failed to access
#    /run/munge/munge.socket.2"), so a private munged in DIR does not work. If a munged already
#    answers there (system one, or another cluster's) it is reused; otherwise `start` runs one with
#    the package's key /etc/munge/munge.key and `stop` ends it (only if it started it, and only if
#    no other Slurm daemon still uses it).
#  - MariaDB runs with --no-defaults (ignores /etc/mysql) on its own datadir, socket and port.
#  - Daemons listen on 127.0.0.1, ports P..P+3 (default P=16817: slurmctld, slurmd, slurmdbd,
#    MariaDB), away from the standard 6817-6819/3306 of a system Slurm/MariaDB. Two clusters can run
#    at once only with different --port-base; `start` fails clearly when a port is taken.
#
# Environment knobs: PLSWEEP_SLURM_PORT_BASE (default port base),
# PLSWEEP_SLURM_START_TIMEOUT (seconds per wait in `start`, default 60).
set -euo pipefail

PROG=$(basename "$0")
DEFAULT_MAX_ARRAY_SIZE=1001 # Slurm's own default; tests set it low on purpose.
CLUSTER_NAME=plsweep
START_TIMEOUT=${PLSWEEP_SLURM_START_TIMEOUT:-60}
STOP_TIMEOUT=20
KILL_WAIT=5 # slurm.conf KillWait: seconds between SIGTERM and SIGKILL on cancel/requeue (default 30).
CRED_EXPIRE=10 # slurm.conf AuthInfo=cred_expire: a requeued job waits this long to restart (default 120).

usage() {
    echo usage: >&2
    sed -n '4,6p' "$0" | sed 's/^# \{0,1\}/  /' >&2
    exit 2
}

T_START=$(date +%s%N)
# Seconds since the script started, to one decimal (plain bash: bc may not be installed).
elapsed() {
    local ms=$((($(date +%s%N) - T_START) / 1000000))
    echo "$((ms / 1000)).$((ms % 1000 / 100))"
}
log() { echo "[$PROG +$(elapsed)s] $*" >&2; }

# Print the last lines of the given log files (those that exist) to stderr.
tail_logs() {
    local f
    for f in "$@"; do
        if [[ -s $f ]]; then
            echo "----- last lines of $f -----" >&2
            tail -n 25 "$f" >&2
        fi
    done
}

# die MESSAGE [LOGFILE...]: report, show the relevant log tails, stop whatever this run started
# (so no half-started daemon keeps ports busy; logs stay in DIR), and exit 1.
die() {
    local msg=$1
    shift
    echo "[$PROG] ERROR: $msg" >&2
    if [[ -n ${LAST_WAIT_OUTPUT:-} ]]; then
        echo "----- output of the last check -----" >&2
        echo "$LAST_WAIT_OUTPUT" >&2
    fi
    tail_logs "$@"
    if [[ ${STARTING:-0} == 1 ]]; then
        STARTING=0
        log "stopping the daemons started so far (logs stay in $DIR)"
        stop_all >&2 || true
    fi
    exit 1
}

require_root() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "[$PROG] ERROR: must run as root (the daemons run as root and jobs run as root on this node)." >&2
        exit 1
    fi
}

require_commands() {
    local missing=() c
    for c in munged mungekey munge unmunge mariadbd mariadb-install-db mariadb \
        slurmdbd slurmctld slurmd sacctmgr sacct sinfo squeue scancel scontrol; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    if ((${#missing[@]})); then
        echo "[$PROG] ERROR: missing commands: ${missing[*]}" >&2
        echo "[$PROG] install: DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge slurmdbd mariadb-server" >&2
        exit 1
    fi
}

# Paths inside DIR; DIR must be absolute (it is written into config files).
set_paths() {
    CONF=$DIR/slurm.conf
    DBD_CONF=$DIR/slurmdbd.conf
    ENV_SH=$DIR/env.sh
    # munged runs as user munge, which cannot enter DIR (0700 root): its files stay in its own
    # standard places; DIR/run/munged.pid records that this cluster started it.
    MUNGE_SOCKET=/run/munge/munge.socket.2
    MUNGE_PID=$DIR/run/munged.pid
    MUNGE_LOG=/var/log/munge/munged.log
    DB_DIR=$DIR/mysql
    DB_SOCKET=$DB_DIR/mysqld.sock
    DB_PID=$DB_DIR/mysqld.pid
    DB_LOG=$DB_DIR/mysqld.err
    LOG_DIR=$DIR/log
    RUN_DIR=$DIR/run
    CTLD_PID=$RUN_DIR/slurmctld.pid
    SLURMD_PID=$RUN_DIR/slurmd.pid
    DBD_PID=$RUN_DIR/slurmdbd.pid
    CTLD_LOG=$LOG_DIR/slurmctld.log
    SLURMD_LOG=$LOG_DIR/slurmd.log
    DBD_LOG=$LOG_DIR/slurmdbd.log
    WAIT_OUT=$RUN_DIR/last-check.out
    NODE=$(hostname -s)
}

# alive PID: the process exists and is not a zombie. (In this container, gVisor's init reaps the
# daemons' zombies only ~2 s after they exit; waiting for /proc/PID to vanish wasted 2 s per daemon.)
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) } # fields after "(comm) "; the first one is the state
    [[ ${stat%% *} != Z ]]
}

# pid_of PIDFILE COMM: the pid in PIDFILE if that process is alive AND is the expected program
# (guards against killing an unrelated process that reused a stale pid).
pid_of() {
    local pidfile=$1 comm=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] && alive "$pid" || return 1
    echo "$pid"
}

# wait_until TIMEOUT COMMAND...: poll COMMAND every 0.2 s until it succeeds; fail after TIMEOUT s.
wait_until() {
    local timeout=$1
    shift
    local deadline=$((SECONDS + timeout))
    until "$@" >"$WAIT_OUT" 2>&1; do
        if ((SECONDS >= deadline)); then
            # Keep the last attempt's output for die() to show.
            LAST_WAIT_OUTPUT=$(tail -n 5 "$WAIT_OUT")
            return 1
        fi
        sleep 0.2
    done
}

# Fail clearly if something already listens on PORT (another plsweep cluster or a system daemon).
check_port_free() {
    local port=$1 what=$2
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        local hint="" p conf
        # Name the other plsweep cluster if there is one: its slurmctld carries SLURM_CONF.
        for p in $(pgrep -x slurmctld || true); do
            conf=$(tr '\0' '\n' 2>/dev/null <"/proc/$p/environ" | sed -n 's/^SLURM_CONF=//p' || true)
            if [[ -n $conf ]]; then
                hint+="
  slurmctld pid $p runs with SLURM_CONF=$conf; stop it with: $0 stop ${conf%/*}"
            fi
        done
        die "port $port ($what) on 127.0.0.1 is already in use: is another cluster running?$hint
  Or use other ports: --port-base N (or PLSWEEP_SLURM_PORT_BASE=N; now $PORT_BASE, uses N..N+3)."
    fi
}

# ---------------------------------------------------------------------------------------------
# Configuration files
# ---------------------------------------------------------------------------------------------

write_configs() {
    local cpus mem_mb
    cpus=$(nproc)
    # RealMemory must not exceed what slurmd detects, or the node is drained ("Low RealMemory").
    # Take 80% of the memory available now (the container may be smaller than the host).
    mem_mb=$(awk '/^MemAvailable:/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
    ((mem_mb >= 100)) || mem_mb=100
    # No spank plugins from /etc/slurm: point PlugStackConfig at an empty file of our own.
    : >"$DIR/plugstack.conf"

    cat >"$CONF" <<EOF
# Written by $PROG; a one-node cluster on loopback. See ../shared/slurm-dev-cluster.md beside the repository.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
# munged on its standard socket (see start_munge).
AuthType=auth/munge
CredType=cred/munge
# No systemd/cgroups in the container: track processes by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
PlugStackConfig=$DIR/plugstack.conf
MailProg=/bin/true
# Cores are the consumable resource (2 cores: 2 concurrent 1-cpu tasks).
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# sched/builtin with no scheduling delays: ~2 array tasks/s instead of ~0.7 with sched/backfill.
# (Changing these needs a slurmctld restart, not 'scontrol reconfigure'.) sched_interval=2: the
# periodic pass that starts jobs whose BeginTime has passed (requeued jobs) runs every 2 s instead of
# every 60 s. Keep it FIRST: sched/builtin looks for the first "interval=" substring and would
# otherwise read the 0 of sched_min_interval=0 ("error: Invalid SchedulerParameters interval: 0").
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2,sched_min_interval=0,batch_sched_delay=0
# Real clusters cap arrays (Slurm's default is 1001); tests set it low to exercise chunking.
MaxArraySize=$MAX_ARRAY_SIZE
MaxJobCount=$MAX_JOB_COUNT
# Requeue (scontrol requeue / submitit preemption) must work; keep it quick: KillWait is the grace
# between SIGTERM and SIGKILL (default 30 s), and cred_expire is also how long a requeued job waits
# (pending, reason BeginTime) before it may start again (default 120 s).
JobRequeue=1
KillWait=$KILL_WAIT
AuthInfo=cred_expire=$CRED_EXPIRE
# A node that was down comes back by itself when slurmd registers with a valid config.
ReturnToService=2
# Accounting through slurmdbd, so that sacct (which submitit polls) works.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageEnforce=limits
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
# State, spool, pids and logs inside DIR.
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$SLURMD_LOG
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

    # slurmdbd has no -f flag: it reads slurmdbd.conf from the folder of SLURM_CONF, and refuses
    # the file unless it is mode 600 and owned by SlurmUser (it holds the database password).
    (
        umask 077
        cat >"$DBD_CONF" <<EOF
# Written by $PROG.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
LogFile=$DBD_LOG
PidFile=$DBD_PID
DebugLevel=info
EOF
    )
    chmod 600 "$DBD_CONF"

    cat >"$ENV_SH" <<EOF
# Source this file to use the cluster in $DIR: . $ENV_SH
export SLURM_CONF=$CONF
EOF
}

# ---------------------------------------------------------------------------------------------
# Daemons (one start function each, in start order)
# ---------------------------------------------------------------------------------------------

start_munge() {
    rm -f "$MUNGE_PID"
    if munge_ok >/dev/null 2>&1; then
        log "reusing the munged already answering on $MUNGE_SOCKET"
        return 0
    fi
    # As the Debian service does it (verified in the shared doc): user munge, the key made by the
    # package, /run/munge created by hand (no systemd/tmpfiles here). --force: start even if a
    # stale socket or pid file from a killed munged is left behind.
    [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 600 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
    runuser -u munge -- munged --force </dev/null >>"$RUN_DIR/munged.out" 2>&1 ||
        die "munged failed to start" "$RUN_DIR/munged.out" "$MUNGE_LOG"
    wait_until "$START_TIMEOUT" munge_ok || die "munge -n | unmunge does not succeed" "$MUNGE_LOG"
    # Record the pid in DIR: this cluster owns that munged and `stop` ends it.
    cp /run/munge/munged.pid "$MUNGE_PID"
}

munge_ok() {
    munge --socket="$MUNGE_SOCKET" -n | unmunge --socket="$MUNGE_SOCKET"
}

# shellcheck disable=SC2120 # called with and without arguments
db_sql() {
    # Connect through the server's own socket as the OS root user (unix_socket authentication).
    mariadb --no-defaults --socket="$DB_SOCKET" -u root "$@"
}

start_mariadb() {
    # --no-defaults must be the first option: ignore /etc/mysql/*.cnf (which point at the system
    # datadir and /run/mysqld). --user=root because DIR is root-only. The datadir is created with
    # mariadb-install-db, so nothing in /var/lib/mysql is needed. The small InnoDB sizes keep the
    # datadir at ~35 MB; innodb_lock_wait_timeout=900 is what slurmdbd asks for at startup.
    local opts=(--user=root --datadir="$DB_DIR/data" --innodb-buffer-pool-size=64M
        --innodb-log-file-size=16M --innodb-lock-wait-timeout=900)
    mkdir -p "$DB_DIR"
    if [[ ! -d $DB_DIR/data/mysql ]]; then
        mariadb-install-db --no-defaults "${opts[@]}" --auth-root-authentication-method=socket \
            --skip-test-db >"$DB_DIR/install.log" 2>&1 ||
            die "mariadb-install-db failed" "$DB_DIR/install.log"
    fi
    # mariadbd does not daemonize: setsid + background, stdio detached (so a caller capturing our
    # output, e.g. subprocess.run in pytest, is not kept waiting by the daemon holding the pipe).
    setsid mariadbd --no-defaults "${opts[@]}" --socket="$DB_SOCKET" --pid-file="$DB_PID" \
        --log-error="$DB_LOG" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        </dev/null >>"$DB_LOG" 2>&1 &
    wait_until "$START_TIMEOUT" db_sql -e 'SELECT 1' || die "MariaDB does not answer on $DB_SOCKET" "$DB_LOG"
    # slurmdbd connects over TCP to 127.0.0.1 (with --skip-name-resolve the host is the address).
    db_sql <<EOF || die "could not create the slurmdbd database user" "$DB_LOG"
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

start_slurmdbd() {
    SLURM_CONF=$CONF slurmdbd </dev/null >>"$DBD_LOG" 2>&1 || die "slurmdbd failed to start" "$DBD_LOG" "$DB_LOG"
    # sacctmgr answers once slurmdbd listens and has created its tables.
    wait_until "$START_TIMEOUT" env SLURM_CONF="$CONF" sacctmgr -n -P list cluster ||
        die "slurmdbd does not answer (sacctmgr list cluster)" "$DBD_LOG" "$DB_LOG"
    # Register the cluster once, before slurmctld first talks to slurmdbd.
    if ! SLURM_CONF=$CONF sacctmgr -n -P list cluster format=Cluster | grep -qx "$CLUSTER_NAME"; then
        SLURM_CONF=$CONF sacctmgr -i add cluster "$CLUSTER_NAME" >>"$DBD_LOG" 2>&1 ||
            die "sacctmgr add cluster $CLUSTER_NAME failed" "$DBD_LOG"
    fi
}

start_slurmctld() {
    mkdir -p "$DIR/state"
    SLURM_CONF=$CONF slurmctld </dev/null >>"$CTLD_LOG" 2>&1 || die "slurmctld failed to start" "$CTLD_LOG"
    wait_until "$START_TIMEOUT" env SLURM_CONF="$CONF" scontrol ping ||
        die "slurmctld does not answer (scontrol ping)" "$CTLD_LOG"
}

start_slurmd() {
    mkdir -p "$DIR/spool"
    SLURM_CONF=$CONF slurmd </dev/null >>"$SLURMD_LOG" 2>&1 || die "slurmd failed to start" "$SLURMD_LOG"
}

node_idle() {
    local state
    state=$(SLURM_CONF=$CONF sinfo -h -N -n "$NODE" -o %T)
    [[ $state == idle || $state == mixed || $state == allocated ]]
}

sacct_ok() {
    SLURM_CONF=$CONF sacct -n -X -a -S now-1hours -o JobID
}

# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

# The cluster's own daemons in start order (munged is shared, handled apart): NAME PIDFILE COMM LOG
daemon_table() {
    cat <<EOF
mariadb $DB_PID mariadbd $DB_LOG
slurmdbd $DBD_PID slurmdbd $DBD_LOG
slurmctld $CTLD_PID slurmctld $CTLD_LOG
slurmd $SLURMD_PID slurmd $SLURMD_LOG
EOF
}

count_running() {
    local n=0 name pidfile comm
    while read -r name pidfile comm _; do
        if pid_of "$pidfile" "$comm" >/dev/null; then n=$((n + 1)); fi
    done < <(daemon_table)
    echo "$n"
}

conf_value() { sed -n "s/^$1=//p" "$CONF" 2>/dev/null | head -n 1; }

# Change MaxArraySize and MaxJobCount of the running cluster in DIR. `scontrol reconfigure` is NOT
# enough: after it, `scontrol show config` reports the new value but sbatch still enforces the old one
# (verified, Slurm 22.05). So rewrite slurm.conf and restart slurmctld; it recovers jobs from
# StateSaveLocation and slurmd keeps running (~3 s).
set_limits() {
    local old=$1 t0=$SECONDS
    log "changing MaxArraySize/MaxJobCount $old -> $MAX_ARRAY_SIZE/$MAX_JOB_COUNT: restarting slurmctld"
    sed -i -e "s/^MaxArraySize=.*/MaxArraySize=$MAX_ARRAY_SIZE/" \
        -e "s/^MaxJobCount=.*/MaxJobCount=$MAX_JOB_COUNT/" "$CONF"
    stop_daemon slurmctld "$CTLD_PID" slurmctld
    start_slurmctld
    # slurmd re-reads slurm.conf and re-registers at once (else: "Node appears to have a different
    # slurm.conf" in the log and the node stays "unknown" for ~4 s until it registers by itself).
    SLURM_CONF=$CONF scontrol reconfigure || true
    wait_until "$START_TIMEOUT" node_idle ||
        die "node $NODE is not up after restarting slurmctld" "$CTLD_LOG" "$SLURMD_LOG"
    log "slurmctld restarted in $((SECONDS - t0)) s with MaxArraySize=$MAX_ARRAY_SIZE MaxJobCount=$MAX_JOB_COUNT"
    echo "$ENV_SH"
}

cmd_start() {
    local running
    running=$(count_running)
    if ((running == 4)) && munge_ok >/dev/null 2>&1; then
        local current
        current="$(conf_value MaxArraySize)/$(conf_value MaxJobCount)"
        if [[ $current == "$MAX_ARRAY_SIZE/$MAX_JOB_COUNT" ]]; then
            log "already running in $DIR (MaxArraySize/MaxJobCount=$current); nothing to do"
            echo "$ENV_SH"
            return 0
        fi
        set_limits "$current"
        return 0
    elif ((running > 0)); then
        log "$running of 4 daemons of a previous start are still running in $DIR; stopping them first"
        stop_all
    fi

    local t0=$SECONDS
    if [[ -s $DBD_CONF ]]; then
        # Restart on an existing DIR: keep the database password its MariaDB already knows.
        DB_PASS=$(sed -n 's/^StoragePass=//p' "$DBD_CONF")
    else
        DB_PASS=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    fi
    check_port_free "$CTLD_PORT" slurmctld
    check_port_free "$SLURMD_PORT" slurmd
    check_port_free "$DBD_PORT" slurmdbd
    check_port_free "$DB_PORT" MariaDB
    mkdir -p "$LOG_DIR" "$RUN_DIR"
    write_configs

    STARTING=1
    log "starting munged";   start_munge
    log "starting MariaDB (127.0.0.1:$DB_PORT)"; start_mariadb
    log "starting slurmdbd (127.0.0.1:$DBD_PORT)"; start_slurmdbd
    log "starting slurmctld (127.0.0.1:$CTLD_PORT)"; start_slurmctld
    log "starting slurmd (127.0.0.1:$SLURMD_PORT)"; start_slurmd
    wait_until "$START_TIMEOUT" node_idle ||
        die "node $NODE is not idle after ${START_TIMEOUT}s: $(SLURM_CONF=$CONF sinfo -h -N -o '%T %E' 2>&1)" \
            "$SLURMD_LOG" "$CTLD_LOG"
    wait_until "$START_TIMEOUT" sacct_ok ||
        die "sacct does not answer after ${START_TIMEOUT}s: $(SLURM_CONF=$CONF sacct -n -X 2>&1 | tail -n 3)" \
            "$DBD_LOG" "$CTLD_LOG"
    STARTING=0
    log "cluster up in $((SECONDS - t0)) s: node $NODE idle, MaxArraySize=$MAX_ARRAY_SIZE, sacct answers"
    log "use it with: . $ENV_SH"
    echo "$ENV_SH"
}

# stop_daemon NAME PIDFILE COMM: SIGTERM, wait up to STOP_TIMEOUT s, then SIGKILL.
stop_daemon() {
    local name=$1 pidfile=$2 comm=$3 pid deadline
    pid=$(pid_of "$pidfile" "$comm") || { rm -f "$pidfile"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if alive "$pid"; then
        log "$name (pid $pid) did not exit within ${STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while alive "$pid"; do sleep 0.1; done
    fi
    rm -f "$pidfile"
    log "stopped $name (pid $pid)"
}

# Job steps (slurmstepd and the job's processes) outlive slurmd by design. Cancel all jobs while
# the controller still runs, then kill leftovers that carry this cluster's SLURM_CONF.
cancel_jobs() {
    local jobs deadline
    pid_of "$CTLD_PID" slurmctld >/dev/null || return 0
    jobs=$(SLURM_CONF=$CONF squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ') || true
    [[ -n ${jobs// /} ]] || return 0
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    SLURM_CONF=$CONF scancel $jobs 2>/dev/null || true
    # Cancelled steps get SIGTERM, then SIGKILL after KillWait.
    deadline=$((SECONDS + KILL_WAIT + 10))
    while ((SECONDS < deadline)); do
        [[ -z $(SLURM_CONF=$CONF squeue -h -t RUNNING,PENDING,COMPLETING,SUSPENDED -o %A 2>/dev/null) ]] && break
        sleep 0.3
    done
}

kill_leftover_steps() {
    local p env
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [[ $p == "$$" ]] && continue
        env=$(tr '\0' '\n' 2>/dev/null <"/proc/$p/environ") || continue
        grep -qx "SLURM_CONF=$CONF" <<<"$env" || continue
        # slurmstepd inherits slurmd's environment; job processes have SLURM_JOB_ID.
        if [[ $(cat "/proc/$p/comm" 2>/dev/null) == slurmstepd ]] || grep -q '^SLURM_JOB_ID=' <<<"$env"; then
            log "killing leftover job process $p ($(cat "/proc/$p/comm" 2>/dev/null))"
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
}

# Pids of all running slurmctld/slurmd/slurmdbd processes (of any cluster).
slurm_daemon_pids() {
    local f
    for f in /proc/[0-9]*/comm; do
        case $(cat "$f" 2>/dev/null) in
        slurmctld | slurmd | slurmdbd)
            f=${f#/proc/}
            if alive "${f%/comm}"; then printf '%s ' "${f%/comm}"; fi
            ;;
        esac
    done
}

stop_all() {
    cancel_jobs
    # Reverse start order; slurmctld before slurmdbd so it can flush job records to it.
    stop_daemon slurmd "$SLURMD_PID" slurmd
    stop_daemon slurmctld "$CTLD_PID" slurmctld
    kill_leftover_steps
    stop_daemon slurmdbd "$DBD_PID" slurmdbd
    stop_daemon mariadb "$DB_PID" mariadbd
    # munged sits on the shared standard socket: leave it to another cluster still using it.
    local others
    others=$(slurm_daemon_pids)
    if [[ -s $MUNGE_PID && -n $others ]]; then
        log "leaving munged running: other Slurm daemons still use it (pids $others)"
        rm -f "$MUNGE_PID"
    fi
    stop_daemon munged "$MUNGE_PID" munged
}

cmd_stop() {
    [[ -d $DIR ]] || { log "no such folder $DIR; nothing to stop"; return 0; }
    local t0=$SECONDS
    stop_all
    log "stopped in $((SECONDS - t0)) s"
}

cmd_status() {
    local n=0 name pidfile comm pid
    if pid=$(pid_of "$MUNGE_PID" munged); then
        printf '%-10s running (pid %s, started by this cluster)\n' munged "$pid"
    elif munge_ok >/dev/null 2>&1; then
        printf '%-10s running (shared, not started by this cluster)\n' munged
    else
        printf '%-10s stopped\n' munged
    fi
    while read -r name pidfile comm _; do
        if pid=$(pid_of "$pidfile" "$comm"); then
            printf '%-10s running (pid %s)\n' "$name" "$pid"
            n=$((n + 1))
        else
            printf '%-10s stopped\n' "$name"
        fi
    done < <(daemon_table)
    if pid_of "$CTLD_PID" slurmctld >/dev/null; then
        echo "SLURM_CONF=$CONF"
        SLURM_CONF=$CONF scontrol show config 2>/dev/null | grep -E '^(MaxArraySize|MaxJobCount|SchedulerType|SlurmctldPort) ' || true
        SLURM_CONF=$CONF sinfo -N -o '%N %P %T %c %m' 2>&1 || true
    fi
    ((n == 4)) && return 0
    ((n == 0)) && return 3
    return 1
}

main() {
    (($# >= 2)) || usage
    local cmd=$1
    DIR=$2
    shift 2
    MAX_ARRAY_SIZE=$DEFAULT_MAX_ARRAY_SIZE
    MAX_JOB_COUNT=
    PORT_BASE=${PLSWEEP_SLURM_PORT_BASE:-16817}
    while (($#)); do
        case $1 in
        --max-array-size) MAX_ARRAY_SIZE=${2:?--max-array-size needs a value}; shift 2 ;;
        --max-array-size=*) MAX_ARRAY_SIZE=${1#*=}; shift ;;
        --max-job-count) MAX_JOB_COUNT=${2:?--max-job-count needs a value}; shift 2 ;;
        --max-job-count=*) MAX_JOB_COUNT=${1#*=}; shift ;;
        --port-base) PORT_BASE=${2:?--port-base needs a value}; shift 2 ;;
        --port-base=*) PORT_BASE=${1#*=}; shift ;;
        *) usage ;;
        esac
    done
    if ! [[ $MAX_ARRAY_SIZE =~ ^[0-9]+$ ]] || ((MAX_ARRAY_SIZE > 4000001)); then
        echo "[$PROG] ERROR: --max-array-size must be an integer 0..4000001" >&2
        exit 2
    fi
    # slurm.conf(5): MaxJobCount "should be much larger than MaxArraySize".
    [[ -n $MAX_JOB_COUNT ]] || MAX_JOB_COUNT=$((MAX_ARRAY_SIZE * 4 > 10000 ? MAX_ARRAY_SIZE * 4 : 10000))
    if ! [[ $MAX_JOB_COUNT =~ ^[0-9]+$ ]] || ((MAX_JOB_COUNT < 1)); then
        echo "[$PROG] ERROR: --max-job-count must be a positive integer" >&2
        exit 2
    fi
    if ! [[ $PORT_BASE =~ ^[0-9]+$ ]] || ((PORT_BASE < 1024 || PORT_BASE > 65532)); then
        echo "[$PROG] ERROR: --port-base must be an integer 1024..65532" >&2
        exit 2
    fi
    CTLD_PORT=$PORT_BASE SLURMD_PORT=$((PORT_BASE + 1)) DBD_PORT=$((PORT_BASE + 2)) DB_PORT=$((PORT_BASE + 3))

    case $cmd in start | stop | status) ;; *) usage ;; esac
    require_root
    require_commands
    # Paths go into config files (no spaces) and become unix sockets (at most 107 bytes).
    [[ $DIR != *[[:space:]]* ]] || { echo "[$PROG] ERROR: DIR must not contain whitespace: '$DIR'" >&2; exit 2; }
    if [[ $cmd == start ]]; then mkdir -p "$DIR"; fi
    if [[ -d $DIR ]]; then DIR=$(cd "$DIR" && pwd -P); else DIR=$(realpath -m "$DIR"); fi
    set_paths
    ((${#DB_SOCKET} < 100)) ||
        { echo "[$PROG] ERROR: DIR is too long for a unix socket path ($DB_SOCKET); use a shorter one" >&2; exit 2; }

    case $cmd in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    esac
}

main "$@"
