# Sourced by .ci/run (and usable by hand): make sure a PostgreSQL server answers on 127.0.0.1 and that the `postgres`
# role can log in to it over TCP, then export AGENTSPACE_TEST_PG_URL. `ensure_postgres` returns 0 when all of that
# holds, and says why on stderr when it does not.
#
#   - installed and running: nothing to do;
#   - installed but stopped: starts the cluster on that port (pg_ctlcluster);
#   - missing: installs Debian's `postgresql` package (root only) and starts its cluster.
#
# Logging in: a server set up for development trusts 127.0.0.1 and the URL has no password. A fresh Debian install
# trusts only the postgres OS user on the local socket (peer) and wants a password over TCP, so after installing one
# this script sets a password of its own (AGENTSPACE_CI_PG_PASSWORD) for the postgres role, through that socket, and
# puts it in the URL. It never changes the password of a server it did not install, unless told to with
# AGENTSPACE_CI_PG_FRESH=1 (used to test this script on a throwaway cluster).
#
# Settings: AGENTSPACE_CI_PG_PORT (default 5432), AGENTSPACE_CI_PG_PASSWORD (default agentspace-ci).

_pg_port() { echo "${AGENTSPACE_CI_PG_PORT:-5432}"; }
_pg_password() { echo "${AGENTSPACE_CI_PG_PASSWORD:-agentspace-ci}"; }

_pg_log() { echo "ensure-postgres: $*" >&2; }

pg_ready() {
    command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p "$(_pg_port)"
}

# Can the postgres role log in over TCP with this password ("" for none)? -w: never prompt.
_pg_login() {
    PGPASSWORD="$1" PGCONNECT_TIMEOUT=5 psql -w -h 127.0.0.1 -p "$(_pg_port)" -U postgres -d postgres -Atqc 'SELECT 1' \
        >/dev/null 2>&1
}

# The Debian cluster ("version name") listening on our port, if one is configured.
_pg_cluster() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 1
    pg_lsclusters -h 2>/dev/null | awk -v port="$(_pg_port)" '$3 == port { print $1, $2; exit }'
}

_pg_install() {
    if [ "$(id -u)" != 0 ]; then
        _pg_log "PostgreSQL is not installed and installing it needs root"
        return 1
    fi
    _pg_log "installing PostgreSQL from Debian's packages"
    apt-get update -qq >/dev/null || return 1
    # Containers often forbid starting services from package scripts; the cluster is started below either way.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || return 1
    AGENTSPACE_CI_PG_FRESH=1
}

_pg_start() {
    local cluster
    cluster=$(_pg_cluster)
    if [ -z "$cluster" ]; then
        _pg_log "no PostgreSQL cluster is configured for port $(_pg_port) (see pg_lsclusters)"
        return 1
    fi
    _pg_log "starting cluster $cluster"
    # shellcheck disable=SC2086  # "version name", two words on purpose
    pg_ctlcluster --skip-systemctl-redirect $cluster start >/dev/null 2>&1 || true
    for _ in $(seq 1 30); do
        pg_ready && return 0
        sleep 1
    done
    _pg_log "cluster $cluster did not start; its log is under /var/log/postgresql/"
    return 1
}

# Set our own password for the postgres role, as the postgres OS user over the local socket (peer auth).
_pg_set_password() {
    local sql
    sql="ALTER ROLE postgres PASSWORD '$(_pg_password)'"
    if [ "$(id -u)" = 0 ] && command -v runuser >/dev/null 2>&1; then
        runuser -u postgres -- psql -p "$(_pg_port)" -d postgres -Atqc "$sql" >/dev/null
    elif [ "$(id -un)" = postgres ]; then
        psql -p "$(_pg_port)" -d postgres -Atqc "$sql" >/dev/null
    else
        return 1
    fi
}

ensure_postgres() {
    if ! pg_ready; then
        if ! command -v pg_isready >/dev/null 2>&1 || [ -z "$(_pg_cluster)" ]; then
            _pg_install || return 1
        fi
        _pg_start || return 1
    fi
    local password=""
    if ! _pg_login ""; then
        password=$(_pg_password)
        if ! _pg_login "$password"; then
            if [ "${AGENTSPACE_CI_PG_FRESH:-0}" != 1 ]; then
                _pg_log "the server on 127.0.0.1:$(_pg_port) refuses the postgres role without a password, and this" \
                    "script only sets one on a server it installed: trust 127.0.0.1 in pg_hba.conf, or set" \
                    "AGENTSPACE_CI_PG_PASSWORD to the role's password"
                return 1
            fi
            _pg_set_password && _pg_login "$password" || {
                _pg_log "could not set a password for the postgres role"
                return 1
            }
            _pg_log "set the postgres role's password (AGENTSPACE_CI_PG_PASSWORD) on this fresh install"
        fi
    fi
    local auth="postgres"
    [ -n "$password" ] && auth="postgres:$password"
    export AGENTSPACE_TEST_PG_URL="postgresql+asyncpg://$auth@127.0.0.1:$(_pg_port)/postgres"
    return 0
}
