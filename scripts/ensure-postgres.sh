# Sourced by .ci/run (and usable by hand): make sure a PostgreSQL server answers on 127.0.0.1:5432.
# Returns 0 when it does. Starts an installed but stopped cluster; installs Debian's package when missing.

pg_ready() {
    command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432
}

ensure_postgres() {
    pg_ready && return 0
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        echo "ci: installing PostgreSQL from Debian's packages" >&2
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || return 1
        else
            return 1
        fi
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
    for _ in $(seq 1 30); do
        pg_ready && return 0
        sleep 1
    done
    return 1
}
