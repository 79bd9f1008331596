#!/usr/bin/env python
"""Measure the sandbox LMS's scores endpoint: POST/s sustained by a separate server process.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/sandbox_bench .venv/bin/python scripts/sandbox_bench.py

It creates the database if missing, migrates it, seeds a platform (one registration with the
generic profile, one course, N students, one line item), starts gunicorn on 127.0.0.1 with
`sandbox_lms.wsgi` (gthread, keep-alive; gunicorn sets TCP_NODELAY on its sockets), obtains an
access token over HTTP, then drives keep-alive connections (TCP_NODELAY) from client processes
for a bounded time and prints the accepted scores per second. Only 127.0.0.1 is contacted.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
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


async def _connection(port: int, path: str, token: str, users: list[str], stop_at: float, counts: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/vnd.ims.lis.v1.score+json\r\nUser-Agent: sandbox-bench\r\n"
        "Connection: keep-alive\r\n"
    )
    n = 0
    while time.monotonic() < stop_at:
        user = users[n % len(users)]
        n += 1
        body = json.dumps({
            "userId": user, "scoreGiven": n % 100, "scoreMaximum": 100, "activityProgress": "Completed",
            "gradingProgress": "FullyGraded",
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        }).encode()
        writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status_line = await reader.readline()
        if not status_line:
            counts["errors"] += 1
            return
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        status = int(status_line.split()[1])
        counts["ok" if status == 200 else "errors"] += 1
        if status != 200 and counts["errors"] <= 3:
            print("  unexpected answer:", status_line.decode().strip(), file=sys.stderr)
    writer.close()


def _client(args: tuple) -> dict:
    port, path, token, user_groups, seconds, warmup = args

    async def run() -> dict:
        warm = {"ok": 0, "errors": 0}
        start = time.monotonic()
        await asyncio.gather(*(_connection(port, path, token, users, start + warmup, warm) for users in user_groups))
        counts = {"ok": 0, "errors": 0}
        start = time.monotonic()
        await asyncio.gather(*(_connection(port, path, token, users, start + seconds, counts) for users in user_groups))
        counts["elapsed"] = time.monotonic() - start
        return counts

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8711)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
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
         "--worker-class", "gthread", "--workers", str(args.workers), "--threads", str(args.threads),
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
        per_client = [groups[i::args.clients] for i in range(args.clients)]
        jobs = [(args.port, seed["scores_path"], token, g, args.seconds, args.warmup) for g in per_client]
        with multiprocessing.Pool(args.clients) as pool:
            results = pool.map(_client, jobs)
        ok = sum(r["ok"] for r in results)
        errors = sum(r["errors"] for r in results)
        elapsed = max(r["elapsed"] for r in results)
        print(f"scores endpoint: {ok / elapsed:,.0f} POST/s accepted "
              f"({ok} in {elapsed:.1f} s, {errors} other answers; gunicorn gthread {args.workers}×{args.threads}, "
              f"{connections} keep-alive connections from {args.clients} client process(es))")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
