"""Names and manifests of pg_backup's artifacts (no Docker; zstd only to read a .sql.zst).

* names: backup ids and labels (:func:`check_name`), dump file names
  (:func:`artifact_name` and its inverse :func:`label_from_artifact`), PostgreSQL
  identifiers of at most 63 bytes (:func:`pg_identifier`), SQL quoting, the COMMENT that
  marks a restored database (:func:`restore_marker`);
* manifests: the JSON written beside each dump (:func:`build_manifest`,
  :func:`read_manifest`, :func:`locate_manifest`);
* the plain-dump completion trailer (:func:`tail_has_trailer` on a stream's tail,
  :func:`check_plain_trailer` on a file, decompressed on the fly).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import subprocess
import tempfile
import zlib

from ansible.module_utils.fileops import CHUNK_SIZE
from ansible.module_utils.ops_errors import CorruptBackupError, PgError
from ansible.module_utils.pipelines import TAIL_BYTES, find_binary

MAX_IDENTIFIER_BYTES = 63
NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT_VERSION = 1
MARKER_PREFIX = "opsauto-restore"
MODES = ("database", "cluster", "globals")
FORMATS = ("custom", "directory", "plain")
COMPRESSIONS = ("none", "gzip", "zstd")
EXTENSIONS = {
    ("custom", "none"): "dump",
    ("directory", "none"): "dir.tar",
    ("plain", "none"): "sql",
    ("plain", "gzip"): "sql.gz",
    ("plain", "zstd"): "sql.zst",
}
TRAILERS = {
    "database": "-- PostgreSQL database dump complete",
    "cluster": "-- PostgreSQL database cluster dump complete",
    "globals": "-- PostgreSQL database cluster dump complete",
}
ENCRYPTED_SUFFIX = ".age"
REQUIRED_MANIFEST_KEYS = ("backup_id", "label", "file", "mode", "format", "sha256", "size")


# --------------------------------------------------------------------------- names


def check_name(value, option):
    """Validate a backup id / label: letters, digits, '.', '_', '-', not starting with '.'."""
    if not isinstance(value, str) or not NAME_RE.match(value) or value.startswith("."):
        raise PgError(
            f"{option} {value!r} is not allowed: use only letters, digits, '.', '_' and '-' "
            "and do not start it with '.' (it becomes part of a file name)"
        )
    return value


def sanitize_label(name):
    """Turn a database name into a file-name-safe label (used when 'label' is not given)."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", name or "").lstrip(".")
    return label or "backup"


def artifact_name(label, fmt, compression="none", encrypted=False):
    """File name of a dump: ``{label}.dump|dir.tar|sql|sql.gz|sql.zst``, plus ``.age``."""
    if fmt != "plain" and compression != "none":
        raise PgError(
            f"compression={compression} applies to format=plain only; format={fmt} is "
            "compressed by pg_dump itself. Remove 'compression' or use format=plain."
        )
    try:
        name = f"{label}.{EXTENSIONS[(fmt, compression)]}"
    except KeyError:
        raise PgError(
            f"unsupported format/compression {fmt}/{compression}: format is one of "
            f"{', '.join(FORMATS)}, compression one of {', '.join(COMPRESSIONS)}"
        ) from None
    return name + ENCRYPTED_SUFFIX if encrypted else name


def manifest_name(label):
    return f"{label}{MANIFEST_SUFFIX}"


def label_from_artifact(filename):
    """The label of a dump file name (inverse of :func:`artifact_name`), or None."""
    if filename.endswith(ENCRYPTED_SUFFIX):
        filename = filename[: -len(ENCRYPTED_SUFFIX)]
    for ext in sorted(EXTENSIONS.values(), key=len, reverse=True):
        if filename.endswith("." + ext) and len(filename) > len(ext) + 1:
            return filename[: -len(ext) - 1]
    return None


def truncate_utf8(text, max_bytes):
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", errors="ignore")


def pg_identifier(base, suffix):
    """``base + suffix`` as a PostgreSQL identifier of at most 63 bytes.

    The suffix (which says what the name is for) is kept; the base is shortened.  When
    the suffix alone is too long, it is shortened and made unique with a short hash.
    """
    limit = MAX_IDENTIFIER_BYTES
    if len((base + suffix).encode("utf-8")) <= limit:
        return base + suffix
    if len(suffix.encode("utf-8")) > limit // 2:
        digest = hashlib.sha256(suffix.encode("utf-8")).hexdigest()[:8]
        suffix = truncate_utf8(suffix, limit // 2 - 9) + "_" + digest
    return truncate_utf8(base, limit - len(suffix.encode("utf-8"))) + suffix


def quote_ident(name):
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value):
    return "'" + value.replace("'", "''") + "'"


def restore_marker(backup_id, sha256):
    """The database COMMENT that marks a database as restored from this backup."""
    return f"{MARKER_PREFIX} backup_id={backup_id} sha256={sha256}"


def utc_now():
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- manifests


def build_manifest(plan, **facts):
    manifest = {
        "manifest_format": MANIFEST_FORMAT_VERSION,
        "backup_id": plan["backup_id"],
        "label": plan["label"],
        "file": plan["name"],
        "mode": plan["mode"],
        "format": plan["format"],
        "compression": plan["compression"],
        "compress_level": plan.get("compress_level"),
        "database": plan["database"],
        "jobs": plan["jobs"],
        "encryption": None,
    }
    if plan.get("recipients"):
        manifest["encryption"] = {"tool": "age", "recipients": list(plan["recipients"])}
    manifest.update(facts)
    return manifest


def read_manifest(path):
    """Load and check a manifest written by :func:`build_manifest`."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise PgError(
            f"manifest {path} does not exist: a pg_backup dump has its manifest beside it as "
            "{label}.manifest.json; give its location with manifest_path"
        ) from None
    except (OSError, ValueError) as exc:
        raise CorruptBackupError(
            f"manifest {path} cannot be read as JSON ({exc}): the backup is corrupt or was not "
            "written by pg_backup; use another backup"
        ) from None
    if not isinstance(data, dict):
        raise CorruptBackupError(f"manifest {path} is not a JSON object: the backup is corrupt")
    missing = [key for key in REQUIRED_MANIFEST_KEYS if key not in data]
    if missing:
        raise CorruptBackupError(
            f"manifest {path} lacks {', '.join(missing)}: the backup is corrupt or was not "
            "written by pg_backup"
        )
    return data


def locate_manifest(path, manifest_path=None):
    if manifest_path:
        return manifest_path
    directory, filename = os.path.split(path)
    label = label_from_artifact(filename)
    if label is None:
        raise PgError(
            f"cannot tell the label of {path}: pg_backup names dumps {{label}}.dump, .dir.tar, "
            ".sql, .sql.gz or .sql.zst; give the manifest with manifest_path"
        )
    return os.path.join(directory, manifest_name(label))


# --------------------------------------------------------------------------- plain dumps


def tail_has_trailer(tail, trailer):
    """True if ``trailer`` is the last line of a plain dump.

    Blank lines, ``--`` lines and the closing ``\\unrestrict`` meta-command are ignored.
    """
    text = tail.decode("utf-8", errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # pg_dump 15.14+ ends with "\unrestrict <key>" after the trailer (CVE-2025-8714 fix)
    while lines and (lines[-1] == "--" or lines[-1].startswith("\\unrestrict ")):
        lines.pop()
    return bool(lines) and lines[-1] == trailer


def check_plain_trailer(path, mode, compression, zstd_bin=None):
    trailer = TRAILERS[mode]
    if not tail_has_trailer(read_plain_tail(path, compression, zstd_bin), trailer):
        raise CorruptBackupError(
            f"{path} does not end with {trailer!r}: the dump is truncated or not a complete "
            "pg_dump/pg_dumpall output"
        )
    return f"trailer {trailer!r} found"


def read_plain_tail(path, compression, zstd_bin=None):
    """The last TAIL_BYTES of the decompressed content of a plain dump."""
    tail = b""
    if compression == "none":
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - TAIL_BYTES))
            return handle.read()
    if compression == "gzip":
        decomp = zlib.decompressobj(wbits=31)
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_SIZE):
                try:
                    tail = (tail + decomp.decompress(chunk))[-TAIL_BYTES:]
                except zlib.error as exc:
                    raise CorruptBackupError(f"{path} is not valid gzip data ({exc})") from None
        if not decomp.eof:
            raise CorruptBackupError(f"{path} is a truncated gzip stream")
        return tail
    if compression == "zstd":
        argv = [zstd_bin or find_binary("zstd"), "-d", "-c", "-q", path]
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err)
            with proc.stdout:
                while chunk := proc.stdout.read(CHUNK_SIZE):
                    tail = (tail + chunk)[-TAIL_BYTES:]
            if proc.wait() != 0:
                err.seek(0)
                raise CorruptBackupError(
                    f"{path} is not valid zstd data: {err.read().decode(errors='replace')}"
                )
        return tail
    raise PgError(f"unknown compression {compression!r}")
