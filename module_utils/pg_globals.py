"""The roles of a backup set's globals dump, created on a server that lacks them.

A restore onto a server that does not have the dump's roles (a fresh server, the restore
drill's throwaway server) fails on ``role "x" does not exist``. With
``restore_globals=missing`` the roles that the set's globals dump (``pg_dumpall
--globals-only``, written by the same backup) holds and the server lacks are created first:
``CREATE ROLE`` with the attributes and password hash the dump recorded (``ALTER ROLE ...
WITH``), the role's own settings (``ALTER ROLE ... SET``) and its memberships in roles that
exist then. A role that already exists is never touched: not its password, attributes,
settings or memberships. Everything runs in one transaction: all the missing roles are
created or none.

Only these statements are taken from the dump, and only after the dump's sha256, size and
completion trailer were checked against its manifest. Tablespaces, ``ALTER ROLE ... IN
DATABASE ... SET`` (the database may not exist yet; a replace copies them from the live
database) and ``GRANTED BY`` (the grantor may not exist; the login user grants instead) are
left out.
"""

from __future__ import annotations

import gzip
import re
import subprocess

from ansible.module_utils.ops_errors import PgError

IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
CREATE_RE = re.compile(rf"^CREATE ROLE (?P<role>{IDENT});$")
ALTER_WITH_RE = re.compile(rf"^ALTER ROLE (?P<role>{IDENT}) WITH .*;$")
ALTER_SET_RE = re.compile(rf"^ALTER ROLE (?P<role>{IDENT}) SET .*;$")
GRANT_RE = re.compile(
    rf"^GRANT (?P<granted>{IDENT}) TO (?P<member>{IDENT})(?P<options>.*?)"
    rf"(?: GRANTED BY {IDENT})?;$"
)
CHOICES = ("missing", "none")


def unquote(ident):
    """``"My Role"`` -> ``My Role``; ``app`` -> ``app`` (as pg_dumpall quotes with fmtId)."""
    if ident.startswith('"'):
        return ident[1:-1].replace('""', '"')
    return ident


def parse_globals(text):
    """The roles of a globals dump: ``(roles, grants)``.

    ``roles``: {name: [statements]} in dump order (CREATE, ALTER ... WITH, ALTER ... SET);
    ``grants``: [(granted role, member, statement without GRANTED BY)].
    """
    roles, grants = {}, []
    for line in text.splitlines():
        line = line.strip()
        match = CREATE_RE.match(line)
        if match:
            roles.setdefault(unquote(match.group("role")), []).insert(0, line)
            continue
        match = ALTER_WITH_RE.match(line) or ALTER_SET_RE.match(line)
        if match:
            roles.setdefault(unquote(match.group("role")), []).append(line)
            continue
        match = GRANT_RE.match(line)
        if match:
            statement = (
                f"GRANT {match.group('granted')} TO {match.group('member')}"
                f"{match.group('options')};"
            )
            grants.append(
                (unquote(match.group("granted")), unquote(match.group("member")), statement)
            )
    # a role without its CREATE (a truncated or edited file) is not created from pieces
    return {
        name: stmts for name, stmts in roles.items() if stmts[0].startswith("CREATE ROLE")
    }, grants


def plan_roles(text, existing):
    """``(names to create, SQL creating them)`` for the roles of ``text`` not in ``existing``."""
    roles, grants = parse_globals(text)
    missing = [name for name in roles if name not in existing]
    if not missing:
        return [], ""
    statements = [stmt for name in missing for stmt in roles[name]]
    known = set(existing) | set(missing)
    statements += [
        stmt for granted, member, stmt in grants if member in missing and granted in known
    ]
    return missing, "BEGIN;\n" + "\n".join(statements) + "\nCOMMIT;\n"


def read_globals(path, verify, open_plaintext):
    """The verified text of the globals dump at ``path``.

    ``verify(path, manifest)`` checks it against its manifest (raises on a corrupt file);
    ``open_plaintext(path, manifest)`` opens its (decrypted) content.
    """
    from ansible.module_utils.pg_artifacts import locate_manifest, read_manifest

    manifest = read_manifest(locate_manifest(path))
    if manifest.get("mode") != "globals":
        raise PgError(
            f"{path} is not a globals dump (its manifest says mode={manifest.get('mode')}): "
            "give the set's globals.sql as globals_path"
        )
    verify(path, manifest)
    with open_plaintext(path, manifest) as handle:
        data = handle.read()
    compression = manifest.get("compression") or "none"
    if compression == "gzip":
        data = gzip.decompress(data)
    elif compression == "zstd":
        data = subprocess.run(
            ["zstd", "-dc"], input=data, capture_output=True, check=True, timeout=120
        ).stdout
    return data.decode("utf-8", errors="replace")


def create_missing_roles(pg, params, maintenance_db, check_mode, verify, open_plaintext):
    """Create the roles of the set's globals dump that the server lacks (restore_globals).

    Returns the names created (in check mode: that would be created); [] when the option
    is ``none``.
    """
    if (params.get("restore_globals") or "none") == "none":
        return []
    path = params.get("globals_path")
    if not path:
        raise PgError(
            "restore_globals=missing needs globals_path, the set's globals dump (globals.sql "
            "or globals.sql.age, written when the backup ran with backup_globals=true); "
            "nothing was changed"
        )
    text = read_globals(path, verify, open_plaintext)
    existing = {row[0] for row in pg.psql("SELECT rolname FROM pg_roles;\n", maintenance_db)}
    names, sql = plan_roles(text, existing)
    if names and not check_mode:
        pg.psql(sql, maintenance_db, context=f" creating the missing roles {', '.join(names)}")
    return names
