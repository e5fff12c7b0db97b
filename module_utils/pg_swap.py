"""Putting a restored database in place of the live one, and repairing interrupted runs.

:func:`swap_in` marks the work database restored and renames it in place of the live
database (kept under another name) in one transaction, after blocking new connections to
the live one; :func:`_recover_swap` leaves no database blocked when that is interrupted.
:func:`repair_interrupted` (and :func:`run_repair`, the module's ``repair_only``) finds and
repairs what an interrupted replace left: a blocked database, a live database renamed away
without its successor, leftover work databases.
"""

from __future__ import annotations

import re
import time

from ansible.module_utils.ops_errors import CommandError
from ansible.module_utils.pg_artifacts import MAX_IDENTIFIER_BYTES
from ansible.module_utils.pg_session import PgContainer

# --------------------------------------------------------------------------- the swap


def drop_database(pg, name, maintenance_db):
    pg.psql(
        'DROP DATABASE IF EXISTS :"db" WITH (FORCE);',
        maintenance_db,
        variables={"db": name},
        context=f" dropping database {name}",
    )


MARK_SQL = "COMMENT ON DATABASE :\"work\" IS :'marker';\n"

BLOCK_SQL = 'ALTER DATABASE :"target" WITH ALLOW_CONNECTIONS false;\n'

SWAP_SQL = """
SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity
 WHERE datname = :'target' AND pid <> pg_backend_pid();
BEGIN;
ALTER DATABASE :"target" RENAME TO :"previous";
ALTER DATABASE :"work" RENAME TO :"target";
COMMIT;
"""

UNBLOCK_SQL = 'ALTER DATABASE :"db" WITH ALLOW_CONNECTIONS true;\n'


def swap_in(pg, target, work_db, previous, maintenance_db, marker, attempts=10):
    """Mark ``work_db`` restored and put it in place of ``target`` (kept as ``previous``).

    The renames happen in one transaction, after new connections to ``target`` are
    blocked and its sessions ended.  The common case takes one psql call.  If that call
    fails in any way (a session that would not end, a permission, a timeout of the call,
    an interrupt), our sessions still running are ended and the state is looked up: a swap
    that committed only gets the old database's connections back; otherwise ``target``
    is unblocked, and the swap is retried step by step (an interrupt is re-raised after
    the recovery instead), so ``target`` never stays blocked.
    """
    variables = {
        "target": target,
        "work": work_db,
        "previous": previous,
        "marker": marker,
        "db": previous,
    }
    try:
        pg.psql(
            MARK_SQL + BLOCK_SQL + SWAP_SQL + UNBLOCK_SQL,
            maintenance_db,
            variables=variables,
            context=f" swapping {target}",
        )
        return
    except CommandError:
        running = False  # psql ended: the careful path below finds out how far it got
    except Exception:
        running = True  # a timeout: the call may still run in the container
    except BaseException:
        _recover_swap(pg, target, previous, maintenance_db, marker)
        raise
    if _recover_swap(pg, target, previous, maintenance_db, marker, retry=True, running=running):
        return
    try:
        pg.psql(MARK_SQL, maintenance_db, variables=variables, context=f" marking {work_db}")
        pg.psql(BLOCK_SQL, maintenance_db, variables=variables, context=f" blocking {target}")
        for attempt in range(attempts):
            try:
                pg.psql(
                    SWAP_SQL, maintenance_db, variables=variables, context=f" swapping {target}"
                )
                break
            except CommandError as exc:
                if "being accessed by other users" not in exc.stderr or attempt == attempts - 1:
                    raise
                time.sleep(0.5)
        pg.psql(UNBLOCK_SQL, maintenance_db, variables={"db": previous})
    except BaseException:
        _recover_swap(pg, target, previous, maintenance_db, marker)
        raise


def _recover_swap(pg, target, previous, maintenance_db, marker, retry=False, running=True):
    """Leave no database blocked after an interrupted swap; True if the swap had committed.

    Our sessions that may still run are ended first, so the state read is final.  With
    ``retry`` the caller goes on with the swap (so a blocked target stays blocked) and
    failures here are raised; otherwise (the caller re-raises its own error) they are
    swallowed.
    """
    try:
        if running:
            pg.terminate_own_sessions(maintenance_db)
        _, infos = pg.server_and_databases([target, previous], maintenance_db)
        swapped = infos[previous] is not None and (infos[target] or {}).get("comment") == marker
        blocked = previous if swapped else target
        if swapped or not retry:
            if infos[blocked] is not None and not infos[blocked]["allow_connections"]:
                pg.psql(UNBLOCK_SQL, maintenance_db, variables={"db": blocked})
        return swapped
    except Exception:
        if retry:
            raise
        return False


# --------------------------------------------------------------------------- earlier runs

# The target and every database named after it by a replace: {target}__pre_* (the
# replaced database) and {target}__restore_* (the work database).
RELATED_SQL = """
SELECT datname, datallowconn FROM pg_database
 WHERE datname = :'target' OR strpos(datname, '__pre_') > 0 OR strpos(datname, '__restore_') > 0
 ORDER BY datname;
"""

RENAME_BACK_SQL = 'ALTER DATABASE :"db" RENAME TO :"target";\n'


def _named_after(name, target, separator):
    """Whether ``name`` is ``target + separator + ...`` (the target possibly cut short)."""
    if separator not in name:
        return False
    base = name.split(separator, 1)[0]
    if base == target:
        return True
    # pg_identifier cuts the target to keep the name within 63 bytes
    return (
        bool(base)
        and len(name.encode("utf-8")) >= MAX_IDENTIFIER_BYTES - 3
        and (target.startswith(base))
    )


def repair_interrupted(pg, target, maintenance_db, check_mode=False):
    """Detect and repair what an interrupted replace of ``target`` left; the repairs done.

    * ``target`` blocked (``datallowconn = false``): killed between blocking and renaming;
      its connections are allowed again.
    * ``target`` missing while exactly one ``{target}__pre_*`` is blocked: the live database
      was renamed away without its successor in place; it is renamed back.
    * a blocked ``{target}__pre_*``: the swap committed, the old database never got its
      connections back; they are allowed again.
    * ``{target}__restore_*``: a work database whose run never finished; dropped.

    In check mode nothing is changed; the repairs are reported with "would".
    """
    rows = pg.psql(
        RELATED_SQL,
        maintenance_db,
        variables={"target": target},
        context=f" while connecting to database {maintenance_db}",
    )
    found = {name: allow == "t" for name, allow in rows}
    previous = sorted(name for name in found if _named_after(name, target, "__pre_"))
    work = sorted(
        name
        for name in found
        if _named_after(name, target, "__restore_") and re.search(r"__restore_[0-9a-f]{8}$", name)
    )
    blocked_previous = [name for name in previous if not found[name]]
    would = "would be " if check_mode else ""
    repairs = []
    if target in found and not found[target]:
        repairs.append(
            f"database {target} did not accept connections (ALLOW_CONNECTIONS false, left by an "
            f"interrupted replace): connections {would}allowed again"
        )
        if not check_mode:
            pg.psql(UNBLOCK_SQL, maintenance_db, variables={"db": target})
    if target not in found and len(blocked_previous) == 1:
        name = blocked_previous.pop()
        repairs.append(
            f"database {target} was missing and {name} (the live database, renamed away by an "
            f"interrupted replace) was blocked: {would}renamed back to {target} and opened "
            "to connections"
        )
        if not check_mode:
            pg.psql(RENAME_BACK_SQL, maintenance_db, variables={"db": name, "target": target})
            pg.psql(UNBLOCK_SQL, maintenance_db, variables={"db": target})
    for name in blocked_previous:
        repairs.append(
            f"database {name} (replaced by an interrupted replace) did not accept connections: "
            f"connections {would}allowed again"
        )
        if not check_mode:
            pg.psql(UNBLOCK_SQL, maintenance_db, variables={"db": name})
    for name in work:
        repairs.append(f"work database {name} of an interrupted restore {would}dropped")
        if not check_mode:
            drop_database(pg, name, maintenance_db)
    return repairs


def run_repair(params, check_mode=False):
    """Only repair what an interrupted earlier replace of the database left (repair_only)."""
    started = time.monotonic()
    target = params["database"]
    pg = PgContainer.from_params(params)
    pg.check_running()
    repairs = repair_interrupted(pg, target, params.get("maintenance_db") or "postgres", check_mode)
    return {
        "changed": bool(repairs),
        "database": target,
        "repairs": repairs,
        "msg": (
            "; ".join(repairs)
            if repairs
            else f"nothing left by an interrupted replace of database {target}"
        ),
        "duration_seconds": round(time.monotonic() - started, 3),
    }
