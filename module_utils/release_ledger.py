"""Shared logic of the ``release_ledger`` module.

The release ledger is a JSON Lines file on each Docker host: one JSON object per line,
one line per recorded deployment of the FastAPI stack, oldest first.  The deploy role
appends to it, the rollback role reads it to find the last known-good release.

Everything here is plain Python (standard library only) so it can be unit-tested
without Ansible.  Problems are raised as :class:`LedgerError`, whose message names the
cause and the fix; the module turns it into ``fail_json``.

Concurrency and durability:

* every change is a read-modify-write done while holding an exclusive ``flock`` on
  ``<path>.lock``, so concurrent writers serialise and ids stay unique;
* the new content is written to a temporary file in the same directory, fsynced,
  moved over the ledger with ``os.replace`` and the directory is fsynced, so a reader
  sees either the old or the new ledger, never a partial one, and readers need no lock;
* the ledger is mode 0600; a directory created for it is mode 0700.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import time

from ansible.module_utils.fileops import atomic_file, ensure_directory, held_flock
from ansible.module_utils.ops_errors import OpsError

HEALTH_CHOICES = ("healthy", "unhealthy")
STATUS_CHOICES = ("good", "bad", "rolled_back")
# Fields of a release that decide whether re-recording it would be a new deployment.
IDENTITY_FIELDS = ("tag", "image_id", "images", "replicas", "health")
RELEASE_FIELDS = ("tag", "image_id", "images", "health", "project", "replicas", "note")
IMAGE_ID_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
FILE_MODE = 0o600
LOCK_SUFFIX = ".lock"
LOCK_TIMEOUT = 30.0
LOCK_POLL_INTERVAL = 0.02


class LedgerError(OpsError):
    """An error to report to the user; the message says what is wrong and how to fix it."""


# --------------------------------------------------------------------------- reading


def _corrupt(path, number, problem):
    statuses = "/".join(STATUS_CHOICES)
    return (
        f"release ledger {path} line {number} is corrupt: {problem}. Nothing was changed. "
        "Fix it by repairing or deleting that line (every line must be one JSON object with "
        f"an integer 'id', a string 'tag' and a 'status' of {statuses}), or move the file "
        f"aside (mv {path} {path}.corrupt) to start a new ledger; moving it aside loses the "
        "release history rollback uses."
    )


def validate_entry(entry):
    """Return a description of what is wrong with a parsed ledger line, or None."""
    if not isinstance(entry, dict):
        return f"expected a JSON object, found a JSON {type(entry).__name__}"
    entry_id = entry.get("id")
    if isinstance(entry_id, bool) or not isinstance(entry_id, int) or entry_id < 1:
        return f"'id' must be a positive integer, found {entry_id!r}"
    tag = entry.get("tag")
    if not isinstance(tag, str) or not tag:
        return f"'tag' must be a non-empty string, found {tag!r}"
    if entry.get("status") not in STATUS_CHOICES:
        return f"'status' must be one of {', '.join(STATUS_CHOICES)}, found {entry.get('status')!r}"
    return None


def parse_ledger(data, path="<ledger>"):
    """Parse ledger content (bytes or str) into a list of entries, oldest first.

    Blank lines are ignored.  Any other line that is not a valid entry raises
    LedgerError naming ``path`` and the 1-based line number; nothing is dropped.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    entries = []
    seen = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise LedgerError(_corrupt(path, number, f"not UTF-8 text ({exc})")) from None
        except ValueError as exc:
            raise LedgerError(_corrupt(path, number, f"not valid JSON ({exc})")) from None
        problem = validate_entry(entry)
        if problem is None and entry["id"] in seen:
            problem = f"duplicate id {entry['id']} (also used on line {seen[entry['id']]})"
        if problem is not None:
            raise LedgerError(_corrupt(path, number, problem))
        seen[entry["id"]] = number
        entries.append(entry)
    return entries


def read_ledger(path):
    """Return the entries of the ledger at ``path``; a missing ledger has no entries."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return []
    except IsADirectoryError:
        raise LedgerError(
            f"release ledger path {path} is a directory; set 'path' to the ledger file inside "
            f"it, e.g. {os.path.join(path, 'releases.jsonl')}"
        ) from None
    except PermissionError as exc:
        raise LedgerError(
            f"cannot read release ledger {path}: {exc.strerror}. Run the task as the ledger's "
            "owner (become: true) or fix the file's permissions."
        ) from None
    except OSError as exc:
        raise LedgerError(f"cannot read release ledger {path}: {exc.strerror or exc}.") from None
    return parse_ledger(data, path)


# --------------------------------------------------------------------------- pure logic


def utc_timestamp(now=None):
    """ISO 8601 UTC timestamp with a ``Z`` suffix, to the second.

    ``now`` is an optional timezone-aware datetime (for tests); default: the current time.
    """
    if now is None:
        stamp = time.gmtime()
    elif now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    else:
        stamp = now.utctimetuple()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", stamp)


def next_id(entries):
    """The id for a new entry: the largest id in the ledger plus one (1 for an empty one)."""
    return max((entry["id"] for entry in entries), default=0) + 1


def normalize_release(release):
    """Validate a ``release`` option and return it with every field present.

    Optional fields that were not given are None; ``images`` becomes a dict of str.
    """
    if not isinstance(release, dict):
        raise LedgerError(f"'release' must be a dictionary, got {type(release).__name__}")
    unknown = sorted(set(release) - set(RELEASE_FIELDS))
    if unknown:
        raise LedgerError(
            f"unknown key(s) in 'release': {', '.join(unknown)}; supported keys are "
            f"{', '.join(RELEASE_FIELDS)}"
        )
    rel = {field: release.get(field) for field in RELEASE_FIELDS}

    for field in ("tag", "image_id"):
        if not isinstance(rel[field], str) or not rel[field].strip():
            raise LedgerError(f"'release.{field}' is required and must be a non-empty string")
    if rel["health"] not in HEALTH_CHOICES:
        raise LedgerError(
            f"'release.health' must be one of {', '.join(HEALTH_CHOICES)}, got {rel['health']!r}"
        )
    # A healthy release becomes a rollback target, so it must name its image exactly. A failed
    # one is recorded whatever is known (e.g. 'unknown' when the image could not be inspected).
    if rel["health"] == "healthy" and not IMAGE_ID_RE.match(rel["image_id"]):
        raise LedgerError(
            "'release.image_id' of a healthy release must be the full image ID, sha256:<64 hex "
            f"digits>, got {rel['image_id']!r}; take it from "
            "`docker image inspect --format '{{.Id}}' IMAGE` (not the tag or a short ID)"
        )
    images = rel["images"]
    if images is not None:
        if not isinstance(images, dict):
            raise LedgerError(
                "'release.images' must be a dictionary of service name to image reference"
            )
        for service, ref in images.items():
            if not isinstance(ref, str) or not ref:
                raise LedgerError(
                    f"'release.images.{service}' must be a non-empty image reference string, "
                    f"got {ref!r}"
                )
        rel["images"] = {str(service): ref for service, ref in sorted(images.items())}
    replicas = rel["replicas"]
    if replicas is not None and (
        isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0
    ):
        raise LedgerError(f"'release.replicas' must be a non-negative integer, got {replicas!r}")
    for field in ("project", "note"):
        if rel[field] is not None and not isinstance(rel[field], str):
            raise LedgerError(f"'release.{field}' must be a string, got {rel[field]!r}")
    return rel


def _identity(record):
    identity = {field: record.get(field) for field in IDENTITY_FIELDS}
    identity["images"] = identity["images"] or {}
    return identity


def same_release(entry, release):
    """True if ``entry`` records the same deployment as ``release`` (see IDENTITY_FIELDS)."""
    return _identity(entry) == _identity(normalize_release(release))


def build_entry(release, entries, now=None):
    """The ledger entry that recording ``release`` after ``entries`` would append."""
    rel = normalize_release(release)
    return {
        "id": next_id(entries),
        "time": utc_timestamp(now),
        "tag": rel["tag"],
        "image_id": rel["image_id"],
        "images": rel["images"],
        "health": rel["health"],
        "status": "good" if rel["health"] == "healthy" else "bad",
        "project": rel["project"],
        "replicas": rel["replicas"],
        "note": rel["note"],
    }


def plan_present(entries, release, now=None):
    """Return ``(new_entries, appended)``; ``appended`` is None when nothing changes.

    Nothing is appended when the last entry already records the same release, so
    re-running a deploy that changed nothing does not grow the ledger.
    """
    if entries and same_release(entries[-1], release):
        return list(entries), None
    entry = build_entry(release, entries, now)
    return list(entries) + [entry], entry


def plan_mark(entries, tag, status):
    """Return ``(new_entries, marked_ids)`` with every entry of ``tag`` set to ``status``.

    ``marked_ids`` lists the ids whose status actually changed.
    """
    if status not in STATUS_CHOICES:
        raise LedgerError(f"'status' must be one of {', '.join(STATUS_CHOICES)}, got {status!r}")
    if not any(entry["tag"] == tag for entry in entries):
        known = sorted({entry["tag"] for entry in entries})
        raise LedgerError(
            f"no ledger entry has tag {tag!r}, so there is nothing to mark; tags in the "
            f"ledger: {', '.join(known) if known else 'none (the ledger is empty)'}. Check the "
            "'tag' option (state=query lists the entries)."
        )
    new_entries, marked = [], []
    for entry in entries:
        if entry["tag"] == tag and entry["status"] != status:
            entry = dict(entry, status=status)
            marked.append(entry["id"])
        new_entries.append(entry)
    return new_entries, marked


def select_last_good(entries):
    """The newest entry whose status is ``good``, or None."""
    for entry in reversed(entries):
        if entry.get("status") == "good":
            return entry
    return None


def select_previous_good(entries):
    """The rollback target: newest ``good`` entry whose tag differs from the last entry's."""
    if not entries:
        return None
    current_tag = entries[-1]["tag"]
    for entry in reversed(entries):
        if entry.get("status") == "good" and entry["tag"] != current_tag:
            return entry
    return None


def summarize(entries):
    """The values the module returns about a ledger's content."""
    return {
        "entries": list(entries),
        "current": entries[-1] if entries else None,
        "last_good": select_last_good(entries),
        "previous_good": select_previous_good(entries),
    }


def format_ledger(entries):
    """Serialise entries as JSON Lines (one object per line, trailing newline)."""
    return "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries)


# --------------------------------------------------------------------------- file system


@contextlib.contextmanager
def ledger_lock(path, timeout=LOCK_TIMEOUT):
    """Hold an exclusive flock on ``path + '.lock'`` (created mode 0600 if missing)."""
    lock_path = path + LOCK_SUFFIX
    ensure_directory(os.path.dirname(os.path.abspath(path)))
    busy = (
        "another process is writing the release ledger. Retry; if it persists, find the "
        f"holder with `fuser {lock_path}` and stop it."
    )
    with held_flock(lock_path, timeout, LedgerError, busy, FILE_MODE):
        yield lock_path


def write_ledger(path, entries):
    """Atomically and durably replace the ledger at ``path`` with ``entries`` (mode 0600).

    fileops.atomic_file: a partial file in the same directory, fsynced, moved over the
    ledger with os.replace, and the directory fsynced.  A symlinked ledger is written
    through the link.  The owner and group of an existing ledger are kept when the user
    is allowed to set them.
    """
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    ensure_directory(directory)
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    except OSError as exc:
        raise LedgerError(f"cannot stat release ledger {target}: {exc.strerror}") from None
    data = format_ledger(entries).encode("utf-8")
    try:
        with atomic_file(target, FILE_MODE) as handle:
            handle.write(data)
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(handle.fileno(), old.st_uid, old.st_gid)
    except OSError as exc:
        hint = {
            errno.ENOSPC: "free some disk space",
            errno.EDQUOT: "free some disk space (quota exceeded)",
            errno.EROFS: "the file system is read-only; choose another 'path'",
        }.get(exc.errno, "run the task with become: true or fix the directory's permissions")
        raise LedgerError(
            f"cannot write release ledger {target}: {exc.strerror or exc}; {hint}. The "
            "ledger was left unchanged."
        ) from None


# --------------------------------------------------------------------------- operations


def _update(path, planner, check_mode, lock_timeout):
    """Run ``planner(entries) -> (new_entries, detail)`` as a locked read-modify-write.

    In check mode the ledger is read without the lock (writes are atomic, so the
    snapshot is consistent) and nothing at all is created or written.
    """
    if check_mode:
        before = read_ledger(path)
        after, detail = planner(before)
    else:
        with ledger_lock(path, lock_timeout):
            before = read_ledger(path)
            after, detail = planner(before)
            if after != before:
                write_ledger(path, after)
    return before, after, detail


def _outcome(before, after, appended=None, marked=None):
    outcome = summarize(after)
    outcome.update(
        changed=after != before,
        appended=appended,
        marked=marked or [],
        before_entries=before,
    )
    return outcome


def record_release(path, release, check_mode=False, now=None, lock_timeout=LOCK_TIMEOUT):
    """state=present: append ``release`` unless the last entry already records it."""
    normalize_release(release)  # fail before touching the file system

    def planner(entries):
        return plan_present(entries, release, now)

    before, after, appended = _update(path, planner, check_mode, lock_timeout)
    return _outcome(before, after, appended=appended)


def mark_release(path, tag, status, check_mode=False, lock_timeout=LOCK_TIMEOUT):
    """state=mark: set ``status`` on every entry whose tag is ``tag``."""
    if not os.path.exists(path):
        raise LedgerError(
            f"release ledger {path} does not exist, so no entry with tag {tag!r} can be "
            "marked. Check 'path', or record the release first with state=present."
        )

    def planner(entries):
        return plan_mark(entries, tag, status)

    before, after, marked = _update(path, planner, check_mode, lock_timeout)
    return _outcome(before, after, marked=marked)


def query_ledger(path):
    """state=query: read the ledger; never changes or creates anything."""
    entries = read_ledger(path)
    return _outcome(entries, entries)


def check_options(params):
    """Reject options that have no effect for the chosen state (catches task typos)."""
    state = params.get("state") or "present"
    allowed = {"present": {"release"}, "mark": {"tag", "status"}, "query": set()}[state]
    ignored = sorted(
        name
        for name in ("release", "tag", "status")
        if params.get(name) is not None and name not in allowed
    )
    if ignored:
        raise LedgerError(
            f"option(s) {', '.join(ignored)} cannot be used with state={state}; remove them or "
            "change 'state' (present uses 'release'; mark uses 'tag' and 'status'; query uses "
            "neither)"
        )


def run(params, check_mode=False):
    """Dispatch on ``params['state']``; returns the outcome dict of the operation."""
    check_options(params)
    state = params.get("state") or "present"
    path = params["path"]
    if state == "present":
        return record_release(path, params["release"], check_mode=check_mode)
    if state == "mark":
        return mark_release(path, params["tag"], params["status"], check_mode=check_mode)
    return query_ledger(path)


def ledger_diff(path, before, after):
    """Ansible diff dict showing the ledger before and after, as JSON Lines text."""
    return {
        "before": format_ledger(before),
        "after": format_ledger(after),
        "before_header": path,
        "after_header": path,
    }
