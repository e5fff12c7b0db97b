"""fastapi-monolith backend.

Written for the Debian bookworm packages: FastAPI 0.92, Starlette 0.26,
pydantic 1.10, uvicorn 0.17, psycopg2 2.9, prometheus_client 0.16.

Configuration (environment):
  APP_VERSION   version string reported by /health, /version and /metrics
  APP_BROKEN    "true" marks a deliberately broken release: /health is always 503
  DB_HOST       PostgreSQL host (default "db")
  DB_PORT       PostgreSQL port (default 5432)
  DB_NAME       database name (default "app")
  DB_USER       database user (default "app")
  DB_PASSWORD   database password (or DB_PASSWORD_FILE pointing at a file)
  DB_CONNECT_TIMEOUT  connect timeout in seconds (default 2)

A new database connection is opened for every request, so the app starts
while the database is down and recovers by itself after the database is
restarted, swapped or restored.
"""

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extras
from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from pydantic import BaseModel, conint, constr
from starlette.routing import Match

log = logging.getLogger("fastapi_monolith")


def _env_bool(name: str, default: str = "false") -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def _db_password() -> str:
    path = os.environ.get("DB_PASSWORD_FILE")
    if path:
        with open(path, encoding="utf-8") as fh:
            return fh.read().rstrip("\r\n")
    return os.environ.get("DB_PASSWORD", "")


APP_VERSION = os.environ.get("APP_VERSION", "0.0.0")
APP_BROKEN = _env_bool("APP_BROKEN")
HOSTNAME = socket.gethostname()

DB_HOST = os.environ.get("DB_HOST", "db")
DB_PORT = int(os.environ.get("DB_PORT", "5432") or "5432")
DB_NAME = os.environ.get("DB_NAME", "app")
DB_USER = os.environ.get("DB_USER", "app")
DB_CONNECT_TIMEOUT = int(os.environ.get("DB_CONNECT_TIMEOUT", "2") or "2")

INT4_MIN = -(2**31)
INT4_MAX = 2**31 - 1
SCHEMA_LOCK_KEY = 7_301_942  # arbitrary advisory-lock key for lazy DDL

CREATE_ITEMS_SQL = """
CREATE TABLE IF NOT EXISTS items (
    id         serial PRIMARY KEY,
    name       text NOT NULL,
    value      integer NOT NULL DEFAULT 0,
    created_at timestamptz DEFAULT now()
)
"""

# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------

REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests handled, by method, route template and status code.",
    ["method", "path", "status"],
)
LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency in seconds, by method and route template.",
    ["method", "path"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
IN_PROGRESS = Gauge(
    "http_requests_in_progress",
    "HTTP requests currently being handled.",
)
APP_INFO = Info("app", "Application build information.")
APP_INFO.info({"version": APP_VERSION, "broken": str(APP_BROKEN).lower()})
APP_VERSION_GAUGE = Gauge(
    "app_version_info",
    "Always 1; the running application version is in the label.",
    ["version"],
)
APP_VERSION_GAUGE.labels(APP_VERSION).set(1)
DB_UP = Gauge(
    "app_database_up",
    "1 if the last /health database check succeeded, else 0.",
)


# --------------------------------------------------------------------------
# Database helpers
# --------------------------------------------------------------------------


def db_connect():
    return psycopg2.connect(
        host=DB_HOST,
        port=DB_PORT,
        dbname=DB_NAME,
        user=DB_USER,
        password=_db_password(),
        connect_timeout=DB_CONNECT_TIMEOUT,
        application_name="fastapi-monolith",
        options="-c statement_timeout=10000",
    )


@contextmanager
def db_cursor() -> Iterator[psycopg2.extras.RealDictCursor]:
    """One connection + one transaction per call; always closed afterwards."""
    conn = db_connect()
    try:
        with conn:  # commit on success, rollback on exception
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                yield cur
    finally:
        conn.close()


def ensure_schema(cur) -> None:
    """Create the items table if it is missing (checked every time, so a
    swapped or freshly restored database is handled too)."""
    cur.execute("SELECT to_regclass('items') IS NOT NULL AS present")
    if cur.fetchone()["present"]:
        return
    # Serialise concurrent creators: CREATE TABLE IF NOT EXISTS alone can race.
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
    cur.execute(CREATE_ITEMS_SQL)


@contextmanager
def items_cursor():
    with db_cursor() as cur:
        ensure_schema(cur)
        yield cur


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


# --------------------------------------------------------------------------
# Models (pydantic v1)
# --------------------------------------------------------------------------

ItemName = constr(strict=True, min_length=1, max_length=1000)
ItemValue = conint(strict=True, ge=INT4_MIN, le=INT4_MAX)


class ItemCreate(BaseModel):
    name: ItemName
    value: ItemValue = 0


class ItemUpdate(BaseModel):
    """PUT body: fields left out keep their current value."""

    name: ItemName | None = None
    value: ItemValue | None = None


class Item(BaseModel):
    id: int
    name: str
    value: int
    created_at: str | None = None


def _row(row) -> dict:
    created = row.get("created_at")
    return {
        "id": row["id"],
        "name": row["name"],
        "value": row["value"],
        "created_at": created.isoformat() if created is not None else None,
    }


def _check_id(item_id: int) -> None:
    if not INT4_MIN <= item_id <= INT4_MAX:
        raise HTTPException(status_code=404, detail="item not found")


# --------------------------------------------------------------------------
# Application
# --------------------------------------------------------------------------

app = FastAPI(title="fastapi-monolith", version=APP_VERSION)


def route_template(scope) -> str:
    """Route path template (e.g. /items/{item_id}) to keep label cardinality low."""
    partial = None
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "path", "<unknown>")
        if match == Match.PARTIAL and partial is None:
            partial = getattr(route, "path", None)
    return partial or "<unmatched>"


class MetricsMiddleware:
    """Plain ASGI middleware: counts requests and observes latency."""

    def __init__(self, app):  # Starlette passes the wrapped app as app=
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        start = time.perf_counter()
        IN_PROGRESS.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            IN_PROGRESS.dec()
            elapsed = time.perf_counter() - start
            method = scope.get("method", "")
            path = route_template(scope)
            REQUESTS.labels(method, path, str(status["code"])).inc()
            LATENCY.labels(method, path).observe(elapsed)


app.add_middleware(MetricsMiddleware)


@app.exception_handler(psycopg2.OperationalError)
@app.exception_handler(psycopg2.InterfaceError)
async def database_unavailable(request, exc):
    log.warning("database unavailable: %s", _first_line(exc))
    return JSONResponse(
        status_code=503,
        content={"detail": "database unavailable: " + _first_line(exc)},
    )


@app.get("/")
def root():
    return {"service": "fastapi-monolith", "version": APP_VERSION, "hostname": HOSTNAME}


@app.get("/health")
def health():
    if APP_BROKEN:
        return JSONResponse(
            status_code=503,
            content={
                "status": "error",
                "database": "unchecked",
                "version": APP_VERSION,
                "reason": "this release is marked broken (APP_BROKEN=true)",
            },
        )
    try:
        conn = db_connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
        finally:
            conn.close()
    except Exception as exc:  # any failure means "not healthy"
        DB_UP.set(0)
        return JSONResponse(
            status_code=503,
            content={
                "status": "error",
                "database": "unavailable",
                "version": APP_VERSION,
                "reason": _first_line(exc),
            },
        )
    DB_UP.set(1)
    return {"status": "ok", "database": "ok", "version": APP_VERSION}


@app.get("/version")
def version():
    return {"version": APP_VERSION, "hostname": socket.gethostname()}


SLOW_MAX_SECONDS = 120.0


@app.get("/slow")
def slow(seconds: float = 1.0):
    """Answers after ``seconds`` (at most SLOW_MAX_SECONDS): a long request for the rollout
    tests (the drain before old replicas stop must let it finish)."""
    if not 0 <= seconds <= SLOW_MAX_SECONDS:
        raise HTTPException(status_code=422, detail=f"seconds must be 0..{SLOW_MAX_SECONDS:g}")
    time.sleep(seconds)
    return {"slept": seconds, "version": APP_VERSION, "hostname": HOSTNAME}


@app.get("/metrics")
def metrics():
    return Response(content=generate_latest(), media_type=CONTENT_TYPE_LATEST)


@app.get("/items", response_model=list[Item])
def list_items():
    with items_cursor() as cur:
        cur.execute("SELECT id, name, value, created_at FROM items ORDER BY id")
        return [_row(r) for r in cur.fetchall()]


@app.post("/items", response_model=Item, status_code=201)
def create_item(item: ItemCreate):
    with items_cursor() as cur:
        cur.execute(
            "INSERT INTO items (name, value) VALUES (%s, %s) RETURNING id, name, value, created_at",
            (item.name, item.value),
        )
        return _row(cur.fetchone())


@app.get("/items/{item_id}", response_model=Item)
def get_item(item_id: int):
    _check_id(item_id)
    with items_cursor() as cur:
        cur.execute("SELECT id, name, value, created_at FROM items WHERE id = %s", (item_id,))
        row = cur.fetchone()
    if row is None:
        raise HTTPException(status_code=404, detail="item not found")
    return _row(row)


@app.put("/items/{item_id}", response_model=Item)
def update_item(item_id: int, item: ItemUpdate):
    _check_id(item_id)
    with items_cursor() as cur:
        cur.execute(
            "UPDATE items SET name = COALESCE(%s, name), value = COALESCE(%s, value) "
            "WHERE id = %s RETURNING id, name, value, created_at",
            (item.name, item.value, item_id),
        )
        row = cur.fetchone()
    if row is None:
        raise HTTPException(status_code=404, detail="item not found")
    return _row(row)


@app.delete("/items/{item_id}", status_code=204)
def delete_item(item_id: int):
    _check_id(item_id)
    with items_cursor() as cur:
        cur.execute("DELETE FROM items WHERE id = %s RETURNING id", (item_id,))
        row = cur.fetchone()
    if row is None:
        raise HTTPException(status_code=404, detail="item not found")
    return Response(status_code=204)
