"""The live database's properties, which a replace gives the work database.

:func:`database_properties` reads the live database's owner, encoding, locale, tablespace,
connection limit and ACL (CREATE DATABASE of the work database takes them);
:func:`copy_database_properties` gives the work database the live one's ACL, settings, role
settings and connection limit, which pg_restore without ``--create`` does not carry.
:func:`check_free_space` refuses a replace without room for a copy of the live database
beside it.
"""

from __future__ import annotations

from ansible.module_utils.ops_errors import CommandError, PgError

# --------------------------------------------------------------------------- properties


# The live database's properties that CREATE DATABASE takes (a replace creates the work
# database with them) and those copied after the restore (COPY_PROPERTIES_SQL).
PROPERTIES_SQL = """
SELECT pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, t.spcname, d.datconnlimit,
       d.datacl::text, pg_get_userbyid(d.datdba)
  FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace
 WHERE d.datname = :'target';
"""

# Settings whose value is a list, stored already quoted ("$user", public): set as they are.
_LIST_SETTINGS = "'search_path', 'temp_tablespaces', 'local_preload_libraries', " + (
    "'session_preload_libraries', 'shared_preload_libraries'"
)

# Statements built from the live database's catalog rows, run by \gexec: its ACL (PUBLIC's
# default privileges revoked first when it has one), ALTER DATABASE ... SET, ALTER ROLE
# ... IN DATABASE ... SET and the connection limit.
COPY_PROPERTIES_SQL = (
    """
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'work')
  FROM pg_database WHERE datname = :'target' AND datacl IS NOT NULL
\\gexec
SELECT format('GRANT %s ON DATABASE %I TO %s%s', a.privilege_type, :'work',
              CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee))
              END, CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
  FROM pg_database d, aclexplode(d.datacl) a
 WHERE d.datname = :'target' AND a.grantee <> d.datdba
\\gexec
SELECT CASE WHEN s.setrole = 0 THEN format('ALTER DATABASE %I', :'work')
            ELSE format('ALTER ROLE %I IN DATABASE %I', pg_get_userbyid(s.setrole), :'work')
       END || format(' SET %s = %s', split_part(c, '=', 1),
              CASE WHEN lower(split_part(c, '=', 1)) IN ("""
    + _LIST_SETTINGS
    + """)
                   THEN substr(c, strpos(c, '=') + 1)
                   ELSE quote_literal(substr(c, strpos(c, '=') + 1)) END)
  FROM pg_database d JOIN pg_db_role_setting s ON s.setdatabase = d.oid, unnest(s.setconfig) c
 WHERE d.datname = :'target'
\\gexec
SELECT format('ALTER DATABASE %I CONNECTION LIMIT %s', :'work', datconnlimit)
  FROM pg_database WHERE datname = :'target' AND datconnlimit <> -1
\\gexec
"""
)


def database_properties(pg, target, maintenance_db):
    """The live ``target``'s owner, encoding, locale, tablespace, connection limit and ACL."""
    rows = pg.psql(
        PROPERTIES_SQL,
        maintenance_db,
        variables={"target": target},
        context=f" reading the properties of database {target}",
    )
    encoding, collate, ctype, tablespace, limit, acl, owner = rows[0]
    return {
        "owner": owner,
        "encoding": encoding,
        "collate": collate,
        "ctype": ctype,
        "tablespace": tablespace,
        "connection_limit": int(limit),
        "acl": acl or None,
    }


def copy_database_properties(pg, target, work_db, maintenance_db):
    """Give ``work_db`` the ACL, settings and role settings ``target`` has."""
    pg.psql(
        COPY_PROPERTIES_SQL,
        maintenance_db,
        variables={"target": target, "work": work_db},
        context=f" copying the settings and privileges of database {target} to {work_db}",
    )


# --------------------------------------------------------------------------- free space

# data_directory is NULL for a role that may not read it (not a superuser): then $PGDATA.
SPACE_SQL = "SELECT pg_database_size(:'db'), current_setting('data_directory', true);\n"
DF_PGDATA = 'd="${PGDATA:-/var/lib/postgresql/data}"; df -P -k "$d" && echo "$d"'


# Room kept beyond the copy itself: the WAL the restore writes, indexes built meanwhile.
SPACE_MARGIN = 0.10


def _size(count):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"  # pragma: no cover


def check_free_space(pg, target, maintenance_db):
    """Refuse a replace without room for a second copy of ``target`` beside it.

    The copy is restored next to the live database on the server's volume: it needs about
    ``pg_database_size(target)`` (plus a margin) free in the data directory, as ``df``
    reports it inside the container.  Returns ``{needed, free, where}``.
    """
    rows = pg.psql(
        SPACE_SQL, maintenance_db, variables={"db": target}, context=" measuring free space"
    )
    size, where = int(rows[0][0]), rows[0][1]
    try:
        if where:
            out = pg.run(["df", "-P", "-k", where], context=" measuring free space").decode()
            lines = out.strip().splitlines()
        else:
            out = pg.run(["sh", "-c", DF_PGDATA], context=" measuring free space").decode()
            lines = out.strip().splitlines()
            where = lines.pop()
        free = int(lines[-1].split()[3]) * 1024
    except (CommandError, IndexError, ValueError) as exc:
        return {"skipped": f"free space could not be measured in container {pg.container}: {exc}"}
    needed = int(size * (1 + SPACE_MARGIN))
    if free < needed:
        raise PgError(
            f"not enough free space for a replace of database {target}: it needs about "
            f"{_size(needed)} ({target} is {_size(size)}, restored beside it, plus "
            f"{SPACE_MARGIN:.0%}), and {_size(free)} is free on {where} in container "
            f"{pg.container}. Nothing was changed; free space on that volume (a kept "
            f"{target}__pre_* database can be dropped) or grow it, then re-run"
        )
    return {"needed": needed, "free": free, "where": where, "database_size": size}
