"""Free space for a backup run, checked before the first dump.

Each database's dump is estimated from the newest complete set that holds a dump of it (the
size of that dump), else from ``pg_database_size`` (larger than a dump, which holds no
indexes and is compressed: a safe side); the globals from their last dump, else 1 MiB.
A directory-format dump is staged on the host before it becomes one tar file, so it counts
twice. The sum plus a margin (10%, at least 16 MiB) must be free in the file system of the
backup directory, for the backup user (statvfs ``f_bavail``), or the run is refused with the
figures, the file system and the ways out, before anything is written.
"""

from __future__ import annotations

import json
import os

from ansible.module_utils.backup_sets import BackupSet, BackupSetError
from ansible.module_utils.pg_artifacts import sanitize_label

MARGIN = 0.10
MIN_MARGIN = 16 * 1024 * 1024
GLOBALS_GUESS = 1024 * 1024

DB_SIZE_SQL = "SELECT d, pg_database_size(d) FROM json_array_elements_text(:'names'::json) AS d;"


def human(size: float) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def last_dump(sets: list[BackupSet], label: str) -> tuple[int, str] | None:
    """(size, backup_id) of the newest dump labelled ``label`` in a complete set."""
    for backup in sets:
        if not backup.complete:
            continue
        for dump in backup.meta.get("dumps", []):
            if dump.get("label") == label and isinstance(dump.get("size"), int):
                return dump["size"], backup.backup_id
    return None


def estimate(
    sets: list[BackupSet], databases: list[str], with_globals: bool, db_sizes, fmt: str
) -> list[tuple[str, int, str]]:
    """``(what, bytes, why)`` per dump of the run. ``db_sizes(names)`` returns
    ``{name: pg_database_size}`` and is called only for databases never dumped before."""
    items, unknown = [], []
    for name in databases:
        found = last_dump(sets, sanitize_label(name))
        if found:
            items.append((name, found[0], f"its dump in set {found[1]}"))
        else:
            unknown.append(name)
    if unknown:
        sizes = db_sizes(unknown)
        items += [(name, int(sizes.get(name, 0)), "pg_database_size") for name in unknown]
    if fmt == "directory":  # staged on the host, then written again as one tar file
        items = [(what, size * 2, f"{why}, twice: staged, then tar") for what, size, why in items]
    if with_globals:
        found = last_dump(sets, "globals")
        items.append(
            ("globals", found[0], f"its dump in set {found[1]}")
            if found
            else ("globals", GLOBALS_GUESS, "a guess")
        )
    return items


def free_space(path: str) -> tuple[int, str]:
    """(bytes free for this user, mount point) of the file system holding ``path`` (or its
    nearest existing parent)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    stat = os.statvfs(probe)
    mount = os.path.realpath(probe)
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    return stat.f_bavail * stat.f_frsize, mount


def check(backup_dir: str, items: list[tuple[str, int, str]], free=None) -> dict:
    """The figures (needed, free, where); BackupSetError naming them when it does not fit."""
    dumps = sum(size for _, size, _ in items)
    needed = dumps + max(int(dumps * MARGIN), MIN_MARGIN)
    available, mount = free if free is not None else free_space(backup_dir)
    figures = {"needed": needed, "free": available, "where": backup_dir, "file_system": mount}
    if needed > available:
        parts = ", ".join(f"{what} {human(size)} ({why})" for what, size, why in items)
        raise BackupSetError(
            f"Not enough free space for the backup in {backup_dir} (file system {mount}): it "
            f"needs about {human(needed)} ({parts}, plus a margin) and {human(available)} is "
            "free. Nothing was written. Free space there (or delete old sets: a lower "
            "backup_keep_last), point stack_backup_dir at a larger file system, or, if the "
            "estimate is wrong, set backup_space_check to false."
        )
    return figures


def database_sizes(pg, maintenance_db: str):
    """A ``db_sizes`` callable for :func:`estimate` reading pg_database_size in ``pg``."""

    def sizes(names):
        rows = pg.psql(DB_SIZE_SQL, maintenance_db, variables={"names": json.dumps(names)})
        return {name: int(size) for name, size in rows}

    return sizes
