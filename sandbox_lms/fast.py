"""The scores endpoint's fast path: a tiny WSGI front before Django, for the sandbox's own server.

`ScoresFront(django_app)` answers `POST /sandbox-lms/api/lineitems/<pk>/lineitem/scores` itself
and hands every other request to Django. The exchange is Django's view's (`ags_scores.scores_exchange`:
token, registration and line item from process memory, faults, throttling, every validation and
profile rule, one upsert statement); what differs is the plumbing:

* no request/response objects, URL resolver or middleware;
* on PostgreSQL, a small pool of psycopg connections per process (`SANDBOX_LMS_DB_POOL`, default 4)
  with server-side binding, so the hot statements are prepared once per connection;
* the request log is written in batches by a background thread (every `LOG_FLUSH_SECONDS` or
  `LOG_FLUSH_ROWS` entries, and at exit). Every entry is kept; a reader in another process sees an
  entry within about `LOG_FLUSH_SECONDS`, and `api.request_log` flushes this process's buffer first.

Works under gunicorn's gevent worker (threads and queues are monkey-patched; psycopg then waits
cooperatively) and under threaded servers alike.
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import re
import threading
from http import HTTPStatus
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl

from django.db import connection

from . import ags_scores, behaviour, request_logging

SCORES_PATH = re.compile(r"/sandbox-lms/api/lineitems/(\d+)/lineitem/scores")
LOG_FLUSH_SECONDS = 0.05
LOG_FLUSH_ROWS = 100
POOL_SIZE = int(os.environ.get("SANDBOX_LMS_DB_POOL", "4"))

_REASONS = {status.value: status.phrase for status in HTTPStatus}


# --- A small connection pool (PostgreSQL) -------------------------------------------------------


class Pool:
    """Up to `size` autocommit psycopg connections to Django's default database, shared by threads/greenlets."""

    vendor = "postgresql"

    def __init__(self, size: int = POOL_SIZE) -> None:
        self.size = size
        self._free: queue.LifoQueue = queue.LifoQueue()
        self._lock = threading.Lock()
        self._all: list[Any] = []
        self._pid = os.getpid()

    def _connect(self) -> Any:
        import psycopg

        settings = connection.settings_dict
        params = {
            "dbname": settings["NAME"], "user": settings["USER"] or None, "password": settings["PASSWORD"] or None,
            "host": settings["HOST"] or None, "port": settings["PORT"] or None, "autocommit": True,
            "prepare_threshold": 0,  # prepare every statement on first use: the hot ones repeat
            "application_name": "sandbox_lms fast path",
        }
        return psycopg.connect(**{k: v for k, v in params.items() if v is not None})

    def _acquire(self) -> Any:
        if self._pid != os.getpid():  # forked: never share the parent's sockets
            self.__init__(self.size)
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            grow = len(self._all) < self.size
            if grow:
                self._all.append(None)  # reserve the slot
        if not grow:
            return self._free.get()
        try:
            conn = self._connect()
        except BaseException:
            with self._lock:
                self._all.remove(None)
            raise
        with self._lock:
            self._all[self._all.index(None)] = conn
        return conn

    def _release(self, conn: Any, broken: bool) -> None:
        if broken or conn.closed:
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)
            try:
                conn.close()
            except Exception:
                pass
            return
        self._free.put(conn)

    def datetime(self, value: Any) -> Any:
        return value

    def execute(self, sql: str, params: list[Any]) -> list[tuple]:
        conn = self._acquire()
        broken = False
        try:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
        except BaseException as error:
            import psycopg

            broken = isinstance(error, psycopg.OperationalError) or not isinstance(error, psycopg.Error)
            raise
        finally:
            self._release(conn, broken)

    def copy(self, statement: str, rows: list[list[Any]]) -> None:
        """COPY … FROM STDIN: a batch of rows in one statement (the cheapest insert for PostgreSQL too)."""
        conn = self._acquire()
        broken = False
        try:
            with conn.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
        except BaseException as error:
            import psycopg

            broken = isinstance(error, psycopg.OperationalError) or not isinstance(error, psycopg.Error)
            raise
        finally:
            self._release(conn, broken)

    def close(self) -> None:
        with self._lock:
            conns, self._all = [c for c in self._all if c is not None], []
        self._free = queue.LifoQueue()
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass


_pool: Pool | None = None


def database() -> Any:
    """The fast path's database: the pool on PostgreSQL, else Django's connection (SQLite, the demo)."""
    global _pool
    if connection.vendor != "postgresql":
        return ags_scores.DjangoDB()
    if _pool is None:
        _pool = Pool()
    return _pool


# --- The request log, in batches ----------------------------------------------------------------


class LogWriter:
    """Buffers request-log rows; a daemon thread inserts them in batches. `flush()` writes what is buffered now."""

    def __init__(self) -> None:
        self._rows: list[list[Any]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def add(self, row: list[Any]) -> None:
        if self._pid != os.getpid():
            self.__init__()
        with self._lock:
            self._rows.append(row)
            count = len(self._rows)
        if self._thread is None:
            self._start()
        if count >= LOG_FLUSH_ROWS:
            self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="sandbox-lms-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(LOG_FLUSH_SECONDS)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the database went away for a moment: keep the rows, try again
                import logging

                logging.getLogger(__name__).exception("request log flush failed")
            finally:
                if connection.vendor != "postgresql":
                    connection.close()  # this thread's own Django connection

    def flush(self) -> int:
        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            db = database()
            try:
                if isinstance(db, Pool):
                    db.copy(_LOG_COPY, rows)
                else:
                    adapt = connection.ops.adapt_datetimefield_value
                    with connection.cursor() as cursor:
                        cursor.executemany(request_logging._LOG_INSERT_SQL, [[*r[:-1], adapt(r[-1])] for r in rows])
            except BaseException:
                with self._lock:
                    self._rows[:0] = rows
                raise
            return len(rows)


_LOG_COPY = (
    "COPY sandbox_lms_sandboxrequestlog (registration_id, kind, method, path, request_headers, request_body,"
    " status, response_body, note, created_at) FROM STDIN"
)
LOG = LogWriter()


def flush_log() -> None:
    """Write this process's buffered request-log entries (readers call this before they read)."""
    LOG.flush()


def close() -> None:
    """Flush the log and close the pool (tests; gunicorn's worker exit goes through atexit)."""
    global _pool
    flush_log()
    if _pool is not None:
        _pool.close()
        _pool = None


atexit.register(flush_log)


# --- The WSGI front -----------------------------------------------------------------------------


class _Headers:
    """The few request headers the log keeps, read from the WSGI environ."""

    __slots__ = ("environ",)

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ

    def get(self, name: str, default: Any = None) -> Any:
        key = "CONTENT_TYPE" if name == "Content-Type" else "HTTP_" + name.upper().replace("-", "_")
        return self.environ.get(key, default)


class InFlight:
    """Score POSTs being answered now, per bearer token (a tool's registration holds one), and the most
    seen at once per registration since the process started: how a drill checks a tool's in-flight
    limit held across all its hosts. Per process: run the sandbox with one (gevent) worker to count all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now: dict[str, int] = {}
        self.most: dict[int, int] = {}

    def enter(self, token: str) -> int:
        with self._lock:
            self._now[token] = self._now.get(token, 0) + 1
            return self._now[token]

    def leave(self, token: str, registration_id: int | None, at_entry: int) -> None:
        with self._lock:
            self._now[token] -= 1
            if not self._now[token]:
                del self._now[token]
            if registration_id is not None:
                self.most[registration_id] = max(self.most.get(registration_id, 0), at_entry)


IN_FLIGHT = InFlight()
IN_FLIGHT_PATH = "/sandbox-lms/api/in-flight"


class ScoresFront:
    """WSGI: the scores endpoint here (and its in-flight tally), everything else to `app` (Django)."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") == "POST":
            match = SCORES_PATH.fullmatch(path)
            if match:
                token = environ.get("HTTP_AUTHORIZATION") or ""
                at_entry = IN_FLIGHT.enter(token)
                registration_id = None
                try:
                    answer, registration_id = self.scores(environ, start_response, int(match.group(1)))
                    return answer
                finally:
                    IN_FLIGHT.leave(token, registration_id, at_entry)
        elif path == IN_FLIGHT_PATH and environ.get("REQUEST_METHOD") == "GET":
            body = json.dumps({"most_in_flight": {str(k): v for k, v in IN_FLIGHT.most.items()}}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return self.app(environ, start_response)

    def scores(self, environ: dict[str, Any], start_response: Callable, pk: int) -> tuple[Iterable[bytes], int | None]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        query_string = environ.get("QUERY_STRING", "")
        try:
            exchange = ags_scores.scores_exchange(
                line_item_id=pk, authorization=environ.get("HTTP_AUTHORIZATION"),
                content_type=environ.get("CONTENT_TYPE", ""), body=body,
                query=dict(parse_qsl(query_string, keep_blank_values=True)) if query_string else {}, db=database(),
            )
        finally:
            if connection.vendor == "postgresql" and connection.connection is not None:
                # A cache miss went through the ORM on this thread's (greenlet's) own Django connection:
                # close it, or every short-lived client connection would leave one open.
                connection.close()
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        LOG.add(request_logging.log_row(
            registration_id=exchange.registration_id, kind="scores", method="POST",
            path=f"{path}?{query_string}" if query_string else path, headers=_Headers(environ), request_body=body,
            status=None if exchange.dropped else exchange.status, response_body=exchange.body,
            note="connection dropped (fault)" if exchange.dropped else "",
        ))
        if exchange.dropped:
            behaviour.drop_connection(environ)
            start_response("499 Client Closed Request", [("Content-Length", "0")])
            return [b""], exchange.registration_id
        headers = [("Content-Type", exchange.content_type), ("Content-Length", str(len(exchange.body)))]
        headers.extend(exchange.headers.items())
        reason = exchange.reason or _REASONS.get(exchange.status, "Unknown")
        start_response(f"{exchange.status} {reason}", headers)
        return [exchange.body], exchange.registration_id
