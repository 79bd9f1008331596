#!/usr/bin/env python
"""Measure the sandbox LMS's scores endpoint: POST/s sustained by a separate server process.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/sandbox_bench .venv/bin/python scripts/sandbox_bench.py

It creates the database if missing, migrates it, seeds a platform (one registration with the
generic profile, one course, N students, one line item), starts gunicorn on 127.0.0.1 with
`sandbox_lms.wsgi` (gevent workers by default, `--worker-class gthread` to compare; keep-alive;
gunicorn sets TCP_NODELAY on its sockets), obtains an access token over HTTP, then drives
keep-alive connections (TCP_NODELAY) from lean client processes (raw sockets multiplexed with
`selectors`) for a bounded time and prints the accepted scores per second, the CPU split between
server, PostgreSQL and load generator, and checks every accepted score has its request-log entry.
Only 127.0.0.1 is contacted. The client, `_drive`, is also scripts/bench_delivery.py's ceiling.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import selectors
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _prepare_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{name}"')


def _seed(port: int, students: int) -> dict:
    import django

    django.setup()
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from sandbox_lms import api
    from sandbox_lms.models import SandboxRequestLog, SandboxResult

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    kid = f"bench-{uuid.uuid4().hex[:8]}"
    public_jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    base = f"http://127.0.0.1:{port}"
    seeded = api.seed_platform(
        base_url=f"{base}/sandbox-lms", login_url=f"{base}/tool/login/", launch_url=f"{base}/tool/launch/",
        tool_public_jwks={"keys": [public_jwk]}, student_names=tuple(f"Student {n}" for n in range(students)),
        name=f"bench {uuid.uuid4().hex[:6]}",
    )
    SandboxResult.objects.filter(line_item__course__platform=seeded.platform).delete()
    SandboxRequestLog.objects.filter(registration__platform=seeded.platform).delete()
    now = int(time.time())
    assertion = jwt.encode(
        {"iss": seeded.registration.client_id, "sub": seeded.registration.client_id, "aud": seeded.token_url,
         "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex},
        private, algorithm="RS256", headers={"kid": kid},
    )
    return {
        "token_url": seeded.token_url,
        "assertion": assertion,
        "scores_path": urlsplit(seeded.line_item_url).path + "/scores",
        "users": [s.sub for s in seeded.students],
        "line_item": seeded.line_item.pk,
        "registration": seeded.registration.pk,
    }


def _get_token(token_url: str, assertion: str) -> str:
    import requests

    response = requests.post(token_url, data={
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
        "scope": "https://purl.imsglobal.org/spec/lti-ags/scope/score",
    }, timeout=10)
    response.raise_for_status()
    return response.json()["access_token"]


_BODY = (
    '{"userId": "%s", "scoreGiven": %d, "scoreMaximum": 100, "activityProgress": "Completed",'
    ' "gradingProgress": "FullyGraded", "timestamp": "%s"}'
)


def _drive(port: int, connections: list[tuple[str, list[tuple[str, str]]]], seconds: float,
           warmup: float = 0.0) -> dict:
    """A lean pooled client: one keep-alive connection (TCP_NODELAY) per entry of `connections`,
    one request in flight on each, multiplexed with `selectors` in this one process (the load
    generator shares the server's cores).

    `connections`: [(bearer token, [(scores path, user id), …]), …]. A connection goes round its
    own cells — a cell is a (line item, user): its scores path (with any query, e.g. Moodle's
    type_id) and the LMS's user id — with a timestamp of now each time; give every cell to one
    connection only, so each cell's timestamps increase.

    The first `warmup` seconds are not counted; then answers received during `seconds` are:
    returns {"ok": 200 answers in the window, "errors": other answers or closed connections in
    the window, "warmup_ok", "warmup_errors", "elapsed": the window, "connections"}. Sending stops
    at the end of the window; answers still outstanding are awaited (at most 10 s) and not counted.
    """
    heads: dict[tuple[str, str], bytes] = {}

    def head_for(path: str, token: str) -> bytes:
        head = heads.get((path, token))
        if head is None:
            head = heads[(path, token)] = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/vnd.ims.lis.v1.score+json\r\nUser-Agent: sandbox-bench\r\n"
                "Connection: keep-alive\r\nContent-Length: "
            ).encode()
        return head

    selector = selectors.DefaultSelector()
    counts = {"ok": 0, "errors": 0, "warmup_ok": 0, "warmup_errors": 0}
    states = []

    def send(state: dict) -> None:
        cells = state["cells"]
        state["n"] += 1
        n = state["n"]
        path, user = cells[n % len(cells)]
        stamp = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        body = (_BODY % (user, n % 100, stamp)).encode()
        state["sock"].sendall(head_for(path, state["token"]) + str(len(body)).encode() + b"\r\n\r\n" + body)

    def close(state: dict) -> None:
        selector.unregister(state["sock"])
        state["sock"].close()

    for token, cells in connections:
        if not cells:
            continue
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state = {"sock": sock, "token": token, "cells": cells, "n": 0, "buf": b""}
        states.append(state)
        selector.register(sock, selectors.EVENT_READ, state)
    measure_from = time.monotonic() + warmup
    stop_at = measure_from + seconds
    for state in states:
        send(state)
    open_count = len(states)
    while open_count:
        events = selector.select(timeout=1.0)
        now = time.monotonic()
        ok_key, error_key = ("ok", "errors") if now >= measure_from else ("warmup_ok", "warmup_errors")
        counted = now < stop_at
        for key, _ in events:
            state = key.data
            try:
                data = state["sock"].recv(65536)
            except OSError:
                data = b""
            if not data:
                if counted:
                    counts[error_key] += 1
                close(state)
                open_count -= 1
                continue
            buf = state["buf"] + data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                state["buf"] = buf
                continue
            length = 0
            lower = buf[:end].lower()
            at = lower.find(b"content-length:")
            if at >= 0:
                line_end = lower.find(b"\r\n", at)
                length = int(lower[at + 15:line_end if line_end > 0 else end])
            if len(buf) < end + 4 + length:
                state["buf"] = buf
                continue
            state["buf"] = buf[end + 4 + length:]
            status = int(buf[9:12])
            if status == 200:
                if counted:
                    counts[ok_key] += 1
            else:
                if counted:
                    counts[error_key] += 1
                if counts["errors"] + counts["warmup_errors"] <= 3:
                    print("  unexpected answer:", buf[:end].split(b"\r\n")[0].decode(), buf[end + 4:end + 4 + length][:200],
                          file=sys.stderr)
            if counted:
                send(state)
            else:
                close(state)
                open_count -= 1
        if time.monotonic() > stop_at + 10:
            break  # answers that never come: bounded
    for state in states:
        if state["sock"].fileno() >= 0:
            close(state)
    counts["elapsed"] = seconds
    counts["connections"] = len(states)
    return counts


def _client(args: tuple) -> dict:
    port, connections, seconds, warmup = args
    cpu = time.process_time()
    counts = _drive(port, connections, seconds, warmup)
    counts["cpu"] = time.process_time() - cpu  # the warm-up's included
    return counts


def _cpu_seconds(pgid: int) -> float:
    """User+system CPU seconds of the processes in a process group (Linux /proc), children included."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _postgres_cpu_seconds() -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if "(postgres)" in stat:
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8711)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--worker-class", default="gevent", choices=["gevent", "gthread"], help="gunicorn worker class")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (gthread)")
    parser.add_argument("--worker-connections", type=int, default=100, help="connections per worker (gevent)")
    parser.add_argument("--clients", type=int, default=1, help="load-generator processes")
    parser.add_argument("--connections", type=int, default=12, help="keep-alive connections in all")
    parser.add_argument("--students", type=int, default=240)
    args = parser.parse_args()

    database_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/sandbox_bench")
    if not database_url.startswith("postgres"):
        sys.exit("Run the benchmark against PostgreSQL: set DATABASE_URL=postgres://…")
    os.environ.update({
        "DATABASE_URL": database_url, "SANDBOX_LMS": "True", "DJANGO_SETTINGS_MODULE": "sandbox_lms.server_settings",
        "DEBUG": "False", "SECRET_KEY": os.environ.get("SECRET_KEY", "sandbox-bench-only"),
    })
    _prepare_database(database_url)
    seed = _seed(args.port, args.students)

    gunicorn = Path(sys.executable).parent / "gunicorn"
    server = subprocess.Popen(
        [str(gunicorn), "sandbox_lms.wsgi:application", "--bind", f"127.0.0.1:{args.port}",
         "--worker-class", args.worker_class, "--workers", str(args.workers), "--threads", str(args.threads),
         "--worker-connections", str(args.worker_connections),
         "--keep-alive", "30", "--log-level", "warning", "--backlog", "256"],
        cwd=ROOT, env=os.environ.copy(), start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", args.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("gunicorn did not start")
                time.sleep(0.2)
        token = _get_token(seed["token_url"], seed["assertion"])
        users = seed["users"]
        connections = max(args.connections, args.clients)
        groups = [users[i::connections] for i in range(connections)]  # each user on one connection: timestamps increase
        conns = [(token, [(seed["scores_path"], user) for user in group]) for group in groups]
        per_client = [conns[i::args.clients] for i in range(args.clients)]
        jobs = [(args.port, c, args.seconds, args.warmup) for c in per_client]
        with multiprocessing.Pool(args.clients) as pool:
            server_cpu, database_cpu = _cpu_seconds(server.pid), _postgres_cpu_seconds()
            results = pool.map(_client, jobs)
            server_cpu, database_cpu = _cpu_seconds(server.pid) - server_cpu, _postgres_cpu_seconds() - database_cpu
        ok = sum(r["ok"] for r in results)
        errors = sum(r["errors"] for r in results)
        elapsed = max(r["elapsed"] for r in results)
        client_cpu = sum(r["cpu"] for r in results)
        model = (f"gunicorn {args.worker_class} {args.workers}×"
                 + (f"{args.threads} threads" if args.worker_class == "gthread" else f"{args.worker_connections} connections"))
        print(f"scores endpoint: {ok / elapsed:,.0f} POST/s accepted "
              f"({ok} in {elapsed:.1f} s, {errors} other answers; {model}, "
              f"{connections} keep-alive connections from {args.clients} client process(es))")
        # The warm-up's CPU is in these too (it ran on the same connections): figures are approximate.
        span = elapsed + args.warmup
        print(f"  CPU over the run, in cores: server {server_cpu / span:.2f}, PostgreSQL {database_cpu / span:.2f}, "
              f"load generator {client_cpu / span:.2f} (of {os.cpu_count()})")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
    _check_log(seed, ok)


def _check_log(seed: dict, ok: int) -> None:
    """Every accepted score has its request-log entry (the fast path writes the log in batches)."""
    from sandbox_lms.models import SandboxRequestLog

    logged = SandboxRequestLog.objects.filter(registration_id=seed["registration"], kind="scores", status=200).count()
    print(f"  request log: {logged} accepted scores logged" + ("" if logged >= ok else f" — {ok - logged} MISSING"))
    if logged < ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
