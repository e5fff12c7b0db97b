#!/usr/bin/env bash
# Entrypoint for fastapi-monolith/postgres (Debian postgresql-15).
#
# Implements the subset of the official postgres image's behaviour the stack
# relies on:
#   POSTGRES_PASSWORD (required on first start, or POSTGRES_PASSWORD_FILE)
#   POSTGRES_USER     superuser name            (default: postgres)
#   POSTGRES_DB       database created at init  (default: $POSTGRES_USER)
#   POSTGRES_INITDB_ARGS  extra initdb arguments (optional)
#   APP_DB_USER       application role (optional; or APP_DB_USER_FILE): created at init
#                     as a LOGIN role that is NOT a superuser, owning $POSTGRES_DB
#   APP_DB_PASSWORD   its password (required with APP_DB_USER; or APP_DB_PASSWORD_FILE)
# With an APP_DB_USER other than POSTGRES_USER, POSTGRES_PASSWORD may be empty: the
# superuser then has no password and is reachable only through the container's local
# socket (docker exec ... psql -U $POSTGRES_USER), never over TCP.
#   PGDATA            data directory (image default /var/lib/postgresql/data)
# Scripts in /docker-entrypoint-initdb.d (*.sh, *.sql, *.sql.gz) run once,
# right after the first initdb.
set -Eeuo pipefail

log() { printf '%s [entrypoint] %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# file_env VAR [DEFAULT]: take VAR from $VAR or from the file named by $VAR_FILE.
file_env() {
    local var="$1" def="${2:-}" fvar="${1}_FILE"
    local val="$def"
    if [ -n "${!var:-}" ] && [ -n "${!fvar:-}" ]; then
        die "both $var and $fvar are set (they are exclusive)"
    fi
    if [ -n "${!var:-}" ]; then
        val="${!var}"
    elif [ -n "${!fvar:-}" ]; then
        val="$(< "${!fvar}")"
    fi
    export "$var"="$val"
    unset "$fvar"
}

# "docker run image -c foo=bar" -> "postgres -c foo=bar"
if [ "$#" -eq 0 ] || [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

if [ "$1" = 'postgres' ] && [ "$(id -u)" = '0' ]; then
    # Running as root: fix ownership of the data and socket dirs, then re-run
    # this script as the postgres OS user.
    mkdir -p "$PGDATA" /var/run/postgresql
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    chmod 0700 "$PGDATA"
    chown postgres:postgres /var/run/postgresql
    chmod 3777 /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups \
        env HOME=/var/lib/postgresql "$BASH_SOURCE" "$@"
fi

if [ "$1" = 'postgres' ]; then
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_USER postgres
    file_env POSTGRES_DB "$POSTGRES_USER"
    file_env POSTGRES_INITDB_ARGS
    file_env APP_DB_USER
    file_env APP_DB_PASSWORD

    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        app_role=
        if [ -n "$APP_DB_USER" ] && [ "$APP_DB_USER" != "$POSTGRES_USER" ]; then
            app_role=$APP_DB_USER
            [ -n "$APP_DB_PASSWORD" ] || die "APP_DB_USER is set but APP_DB_PASSWORD is not"
        fi
        if [ -z "$POSTGRES_PASSWORD" ] && [ -z "$app_role" ]; then
            die "database is uninitialized and POSTGRES_PASSWORD is not set (it may be empty only with an APP_DB_USER other than POSTGRES_USER)"
        fi
        log "initializing database cluster in $PGDATA (superuser '$POSTGRES_USER')"

        # Password goes through a private temp file, never through argv. No password:
        # the superuser can log in only through the local socket (trust, below).
        pwfile=
        pwargs=()
        if [ -n "$POSTGRES_PASSWORD" ]; then
            pwfile="$(mktemp)"
            chmod 0600 "$pwfile"
            printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
            pwargs=(--pwfile="$pwfile")
        fi
        # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is word-split on purpose
        if ! initdb \
                --pgdata="$PGDATA" \
                --username="$POSTGRES_USER" \
                "${pwargs[@]}" \
                --auth-local=trust \
                --auth-host=scram-sha-256 \
                --encoding=UTF8 \
                --locale=C.UTF-8 \
                $POSTGRES_INITDB_ARGS; then
            [ -z "$pwfile" ] || rm -f "$pwfile"
            die "initdb failed"
        fi
        [ -z "$pwfile" ] || rm -f "$pwfile"

        cat > "$PGDATA/pg_hba.conf" <<'HBA'
# TYPE  DATABASE        USER            ADDRESS                 METHOD
# Unix-socket connections inside the container (docker exec psql/pg_dump).
local   all             all                                     trust
local   replication     all                                     trust
# Everything over TCP needs a password.
host    all             all             all                     scram-sha-256
host    replication     all             all                     scram-sha-256
HBA

        cat >> "$PGDATA/postgresql.conf" <<'CONF'

# --- added by docker-entrypoint.sh ---
listen_addresses = '*'
password_encryption = scram-sha-256
CONF

        # Temporary server reachable only through the Unix socket.
        pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start

        psql_base=(psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password
                   --username "$POSTGRES_USER")
        if [ "$POSTGRES_DB" != 'postgres' ]; then
            log "creating database '$POSTGRES_DB'"
            "${psql_base[@]}" --dbname postgres \
                --set db="$POSTGRES_DB" --set owner="$POSTGRES_USER" \
                <<<'CREATE DATABASE :"db" OWNER :"owner";'
        fi

        if [ -n "$app_role" ]; then
            # The application's role: not a superuser, owner of the application database
            # (and so of its public schema). The password reaches psql through its
            # environment (\getenv), never argv.
            log "creating application role '$app_role' (not a superuser), owner of '$POSTGRES_DB'"
            "${psql_base[@]}" --dbname postgres \
                --set app_user="$app_role" --set db="$POSTGRES_DB" <<'SQL'
\getenv app_password APP_DB_PASSWORD
CREATE ROLE :"app_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'app_password';
ALTER DATABASE :"db" OWNER TO :"app_user";
SQL
        fi

        if [ -d /docker-entrypoint-initdb.d ]; then
            for f in /docker-entrypoint-initdb.d/*; do
                [ -e "$f" ] || continue
                case "$f" in
                    *.sh)     log "running $f"; . "$f" ;;
                    *.sql)    log "running $f"; "${psql_base[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
                    *.sql.gz) log "running $f"; gunzip -c "$f" | "${psql_base[@]}" --dbname "$POSTGRES_DB" ;;
                    *)        log "ignoring $f" ;;
                esac
            done
        fi

        pg_ctl -D "$PGDATA" -m fast -w stop
        log "initialization complete"
    else
        log "existing database cluster found in $PGDATA; skipping initialization"
    fi
fi

exec "$@"
