#!/usr/bin/env bash
# A real one-node SLURM cluster for the integration test: munged, MariaDB, slurmdbd (so sacct
# answers as on a production cluster), slurmctld and slurmd on 127.0.0.1, one fake GPU.
#
#   tests/slurm/cluster.sh up     install SLURM from Debian's packages if missing, start it all
#   tests/slurm/cluster.sh down   stop every daemon that `up` started, by pid
#
# Needs root and Debian/Ubuntu. State, configs and daemon logs live in $FAIRDIFF_SLURM_DIR
# (default /tmp/fairdiff-slurm); clients use SLURM_CONF=$FAIRDIFF_SLURM_DIR/etc/slurm.conf.
# `up` also links /etc/slurm/slurm.conf to it, because srun inside a job (the executor's
# jobstep) drops SLURM_CONF and reads the default path.
# Exit status 3 means SLURM could not be installed here (the test skips on it).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=$(realpath -m "${FAIRDIFF_SLURM_DIR:-/tmp/fairdiff-slurm}")
CTLD_PORT=${FAIRDIFF_SLURM_CTLD_PORT:-16817}
SLURMD_PORT=${FAIRDIFF_SLURM_SLURMD_PORT:-16818}
DBD_PORT=${FAIRDIFF_SLURM_DBD_PORT:-16819}
MYSQL_PORT=${FAIRDIFF_SLURM_MYSQL_PORT:-13306}
NODE=$(hostname -s)
export PATH=/usr/sbin:/sbin:$PATH
export SLURM_CONF=$STATE/etc/slurm.conf
# Daemons in the order they start; `down` stops them in reverse.
DAEMONS=(munged mysqld slurmdbd slurmctld slurmd)

log() { echo "cluster.sh: $*" >&2; }

# Show the end of every daemon log, then fail: a bring-up error must say why.
fail() {
    log "$*"
    for f in "$STATE"/log/*.log; do
        [[ -f $f ]] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }
    done
    exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.5 s until it succeeds.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    for ((i = 0; i < seconds * 2; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    fail "timed out after ${seconds}s waiting for $what"
}

install_slurm() {
    local bin
    for bin in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct; do
        command -v "$bin" >/dev/null || { apt_install && return; }
    done
}

apt_install() {
    local apt_log=${TMPDIR:-/tmp}/fairdiff-slurm-apt.log
    command -v apt-get >/dev/null || { log "no apt-get: cannot install SLURM here"; exit 3; }
    log "installing SLURM from Debian's packages (log: $apt_log)"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        munge slurmctld slurmd slurm-client slurmdbd mariadb-server; } >"$apt_log" 2>&1; then
        tail -n 20 "$apt_log" >&2
        log "apt-get could not install SLURM"
        exit 3
    fi
}

# Fill a template's @NAME@ placeholders.
render() {
    sed -e "s|@STATE@|$STATE|g" -e "s|@NODE@|$NODE|g" -e "s|@NODE_LINE@|$NODE_LINE|g" \
        -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
        -e "s|@DBD_PORT@|$DBD_PORT|g" -e "s|@MYSQL_PORT@|$MYSQL_PORT|g" "$1" >"$2"
}

up() {
    [[ $(id -u) == 0 ]] || { log "must run as root"; exit 3; }
    install_slurm
    down 2>/dev/null || true
    rm -rf "$STATE"
    mkdir -p "$STATE"/{etc,log,spool/ctld,spool/slurmd,dev,mysql}
    # munged refuses a socket directory that others can write to or cannot traverse.
    install -d -m 0711 "$STATE/run"
    chmod 0755 "$STATE"

    # The node advertises what slurmd measures here (CPUs, memory), under this host's name.
    NODE_LINE=$(slurmd -C | head -n 1 | sed "s/^NodeName=[^ ]*/NodeName=$NODE NodeAddr=127.0.0.1/")
    render "$HERE/slurm.conf.in" "$STATE/etc/slurm.conf"
    render "$HERE/slurmdbd.conf.in" "$STATE/etc/slurmdbd.conf"
    render "$HERE/gres.conf.in" "$STATE/etc/gres.conf"
    cp "$HERE/cgroup.conf" "$STATE/etc/cgroup.conf"
    chmod 0600 "$STATE/etc/slurmdbd.conf"
    mknod "$STATE/dev/fakegpu0" c 1 3
    if [[ -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
        fail "/etc/slurm/slurm.conf exists and is not a link: not touching a real cluster's config"
    fi
    mkdir -p /etc/slurm
    ln -sfn "$STATE/etc/slurm.conf" /etc/slurm/slurm.conf

    head -c 1024 /dev/urandom >"$STATE/etc/munge.key"
    chmod 0600 "$STATE/etc/munge.key"
    munged --force --socket="$STATE/run/munge.socket" --key-file="$STATE/etc/munge.key" \
        --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" \
        --seed-file="$STATE/run/munged.seed" || fail "munged did not start"

    mariadb-install-db --no-defaults --user=root --datadir="$STATE/mysql" \
        --auth-root-authentication-method=socket --skip-test-db >"$STATE/log/mysql-install.log" 2>&1 ||
        fail "mariadb-install-db failed (see $STATE/log/mysql-install.log)"
    setsid mariadbd --no-defaults --user=root --datadir="$STATE/mysql" \
        --socket="$STATE/run/mysqld.sock" --pid-file="$STATE/run/mysqld.pid" \
        --port="$MYSQL_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --log-error="$STATE/log/mysqld.log" </dev/null >/dev/null 2>&1 &
    wait_for 30 "MariaDB" mariadb --no-defaults -S "$STATE/run/mysqld.sock" -e "SELECT 1"
    mariadb --no-defaults -S "$STATE/run/mysqld.sock" -e \
        "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

    slurmdbd || fail "slurmdbd did not start"
    wait_for 30 "slurmdbd" sacctmgr -n list cluster
    sacctmgr -i add cluster fairdiff >/dev/null
    sacctmgr -i add account fairdiff Description=tests Organization=tests >/dev/null
    sacctmgr -i add user root Account=fairdiff DefaultAccount=fairdiff >/dev/null

    slurmctld -f "$SLURM_CONF" || fail "slurmctld did not start"
    wait_for 30 "slurmctld" scontrol ping
    slurmd -f "$SLURM_CONF" || fail "slurmd did not start"
    wait_for 30 "node $NODE to be idle" bash -c "sinfo -h -n $NODE -o %T | grep -qx idle"
    log "up: SLURM_CONF=$SLURM_CONF, node $NODE ($(sinfo -h -n "$NODE" -o '%c CPUs, %m MB, %G'))"
}

# A process that exited but was not reaped yet (a zombie) counts as stopped.
alive() {
    [[ -e /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

down() {
    local i t name pidfile pid
    if [[ -f $STATE/run/slurmctld.pid ]]; then
        scancel --full --quiet --user=root 2>/dev/null || true
    fi
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        name=${DAEMONS[i]}
        pidfile=$STATE/run/$name.pid
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        if kill "$pid" 2>/dev/null; then
            for ((t = 0; t < 40; t++)); do
                alive "$pid" || break
                sleep 0.25
            done
            alive "$pid" && kill -KILL "$pid" 2>/dev/null
        fi
        rm -f "$pidfile"
    done
    if [[ $(readlink /etc/slurm/slurm.conf 2>/dev/null) == "$STATE/etc/slurm.conf" ]]; then
        rm -f /etc/slurm/slurm.conf
    fi
}

case ${1:-} in
up) up ;;
down) down ;;
*)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
