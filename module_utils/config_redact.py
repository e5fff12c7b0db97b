"""Secrets kept out of every file of the configuration snapshot, not only .env.

Compose files often carry a password as a default value (``${DB_PASSWORD:-secret}``) or
inline (``POSTGRES_PASSWORD: secret``), and any file may hold a known secret. Before a
file is stored, :func:`redact` replaces

1. every known secret value (the database passwords, the S3 keys, the operator's list),
   wherever its exact bytes occur, binary files included;
2. in text files, the default of a variable reference whose name looks secret
   (``${NAME:-value}``, ``${NAME-value}``, ``${NAME:=value}``, ``${NAME=value}``);
3. in text files, the value of an assignment whose name looks secret (``NAME: value``,
   ``NAME=value``, ``"NAME": "value"``, ``- NAME=value``), unless the value only refers to a
   variable (``${NAME}``, ``$NAME``) or the name ends in ``_FILE`` (a path, not a secret).

by ``***REDACTED***``. Values shorter than :data:`MIN_VALUE_LENGTH` characters are not
searched for (they would match everywhere). What a name "looks secret" means is the
``secret_pattern`` regular expression (case-insensitive), as for .env.
"""

from __future__ import annotations

import re

REDACTED = "***REDACTED***"
# Variable names whose values are secrets (a regular expression, case-insensitive): the
# configuration snapshot and the configuration restore default to it.
SECRET_NAME_PATTERN = "PASSWORD|SECRET|TOKEN|KEY"
MIN_VALUE_LENGTH = 4
NAME = r"[A-Za-z_][A-Za-z0-9_.-]*"
# ${NAME:-default} / ${NAME-default} / ${NAME:=default} / ${NAME=default}
DEFAULT_RE = re.compile(r"\$\{(" + NAME + r")(:?[-=])([^}]*)\}")
# NAME: value / NAME=value / "NAME": "value" / - NAME=value (one line; value to end of line)
ASSIGN_RE = re.compile(
    r"""^(?P<lead>[ \t]*(?:-[ \t]+)?(?:export[ \t]+)?)(?P<q>["']?)(?P<name>"""
    + NAME
    + r""")(?P=q)"""
    r"""(?P<sep>[ \t]*[:=][ \t]*)(?P<value>\S.*?)(?P<tail>[ \t]*,?[ \t]*)$""",
    re.MULTILINE,
)
REFERENCE_RE = re.compile(r"""^["']?\$(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)["']?$""")


def secret_values(values):
    """The distinct non-trivial values to search for, longest first (a value inside another
    is then never left half replaced)."""
    found = {str(v) for v in values or () if v is not None and len(str(v)) >= MIN_VALUE_LENGTH}
    return sorted(found, key=len, reverse=True)


def redact(data, values=(), secret_pattern=None):
    """``(redacted bytes, number of replacements)`` of a file's bytes ``data``."""
    count = 0
    for value in secret_values(values):
        needle = value.encode("utf-8")
        hits = data.count(needle)
        if hits:
            data = data.replace(needle, REDACTED.encode())
            count += hits
    if not secret_pattern:
        return data, count
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data, count  # binary: only the exact values above
    secret = re.compile(secret_pattern, re.IGNORECASE)
    text, defaults = _redact_defaults(text, secret)
    text, assigned = _redact_assignments(text, secret)
    if defaults or assigned:
        data = text.encode("utf-8")
    return data, count + defaults + assigned


def _redact_defaults(text, secret):
    hits = 0

    def replace(match):
        nonlocal hits
        if not secret.search(match.group(1)) or match.group(3) in ("", REDACTED):
            return match.group(0)
        hits += 1
        return f"${{{match.group(1)}{match.group(2)}{REDACTED}}}"

    return DEFAULT_RE.sub(replace, text), hits


def _redact_assignments(text, secret):
    hits = 0

    def replace(match):
        nonlocal hits
        name, value = match.group("name"), match.group("value")
        if (
            not secret.search(name)
            or name.upper().endswith("_FILE")
            or REDACTED in value
            or REFERENCE_RE.match(value)
            or value.startswith(("{", "[", "|", ">"))  # a nested block, not a value
        ):
            return match.group(0)
        hits += 1
        quote = (
            value[0] if value[0] in "\"'" and value.endswith(value[0]) and len(value) > 1 else ""
        )
        new = f"{quote}{REDACTED}{quote}"
        return (
            f"{match.group('lead')}{match.group('q')}{name}{match.group('q')}"
            f"{match.group('sep')}{new}{match.group('tail')}"
        )

    return ASSIGN_RE.sub(replace, text), hits
