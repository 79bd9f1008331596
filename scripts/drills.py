#!/usr/bin/env python
"""Grade delivery fault drills with real processes, on a private PostgreSQL and a private Redis.

    .venv/bin/python scripts/drills.py [--only NAME[,NAME]] [--list]

Nothing shared is touched: the drills start their own throwaway PostgreSQL cluster (initdb + pg_ctl
into a temp dir, as the `postgres` user when run as root) and their own redis-server (no
persistence), each on a free loopback port, so they may kill and restart them. Also started: the
sandbox LMS (gunicorn, `sandbox_lms.wsgi`) and one Celery worker (`--pool=threads`). The driver
runs `sweeper.sweep()` every second, with GRADE_DELIVERY_STALE_CLAIM_SECONDS=5 and
GRADE_DELIVERY_REQUEUE_AFTER_SECONDS=3 (the production defaults are 300 and 30).

Each drill seeds a fresh registration (one course, 20 students, 3 graded activities), records
results through `gradesync.api.record_result` while the fault happens (a newer, higher grade
follows for a quarter of the cells), ends the fault, waits for the outbox to drain and checks:
every delivery ended `sent` (or visibly failed: refused/dead are reported as FAIL here since
every fault ends), the LMS holds what the policy (highest) says for every cell, no older grade
was accepted after a newer one, and at most 1% duplicate score POSTs (same cell and score
accepted twice, counted from the sandbox's request log). Each drill prints
`drill <name>: PASS` or `drill <name>: FAIL (<why>)`; every process started is stopped by pid.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_delivery as bench  # noqa: E402

ROOT = bench.ROOT
log = bench.log


# --- Private services ---------------------------------------------------------------------------


class PrivatePostgres:
    """`host`: the address it listens on; `prefix`: what its commands run under (e.g. `ip netns exec NS`)."""

    def __init__(self, port: int, host: str = "127.0.0.1", prefix: tuple[str, ...] = ()) -> None:
        self.port = port
        self.host = host
        self.prefix = list(prefix)
        self.dir = Path(tempfile.mkdtemp(prefix="drills-pg-"))
        self.data = self.dir / "data"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run([*self.prefix, *self.as_user, *args], check=True, timeout=timeout, stdout=subprocess.DEVNULL,
                       stderr=subprocess.STDOUT, start_new_session=True)

    def init(self) -> None:
        self._run(shutil.which("initdb") or "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        if self.host != "127.0.0.1":
            # initdb trusts loopback only: trust the subnet this server sits on too (the drill's own hosts).
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write("host all all samenet trust\n")
        self.start()

    def start(self) -> None:
        self._run(shutil.which("pg_ctl") or "pg_ctl", "-D", str(self.data), "-l", str(self.dir / "pg.log"), "-w", "-o",
                  f"-p {self.port} -c listen_addresses={self.host} -k {self.dir} -c max_connections=150 -c fsync=off",
                  "start")

    def restart(self) -> None:
        self._run(shutil.which("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "restart")

    def stop(self, keep_log: Path | None = None) -> None:
        try:
            self._run(shutil.which("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=30)
        except Exception:  # noqa: BLE001
            pass
        if keep_log is not None and (self.dir / "pg.log").exists():
            shutil.copy(self.dir / "pg.log", keep_log)
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgres://postgres@{self.host}:{self.port}/drills"

    def create_database(self) -> None:
        subprocess.run([*self.prefix, *self.as_user, "psql", "-h", self.host, "-p", str(self.port), "-U", "postgres", "-q",
                        "-c", "CREATE DATABASE drills"], check=True, stdout=subprocess.DEVNULL)


class PrivateRedis:
    def __init__(self, port: int, processes: bench.Processes, host: str = "127.0.0.1", prefix: tuple[str, ...] = ()) -> None:
        self.port = port
        self.host = host
        self.prefix = list(prefix)
        self.processes = processes
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = self.processes.start(
            "redis", [*self.prefix, shutil.which("redis-server") or "redis-server", "--bind", self.host, "--port", str(self.port),
                      "--save", "", "--appendonly", "no", "--daemonize", "no",
                      # Off the loopback (the multi-host drill's own subnet), Redis refuses clients unless told.
                      "--protected-mode", "yes" if self.host == "127.0.0.1" else "no"], dict(os.environ))
        bench.wait_for_port(self.port, process=self.process, host=self.host)

    def kill(self) -> None:
        if self.process is not None:
            self.processes.stop(self.process, kill=True)


# --- The drill stage ----------------------------------------------------------------------------


class Stage:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.processes = bench.Processes(Path(args.logs))
        self.pg = PrivatePostgres(bench.free_port())
        self.redis = PrivateRedis(bench.free_port(), self.processes)
        self.port = bench.free_port()
        self.sandbox: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.worker_n = 0
        self.worker_down_on_purpose = False
        self.env: dict[str, str] = {}
        self.sweeping = threading.Event()
        self.sweeper: threading.Thread | None = None

    def up(self) -> None:
        self.pg.init()
        self.pg.create_database()
        self.redis.start()
        redis_base = f"redis://127.0.0.1:{self.redis.port}"
        self.env = bench.configure_django(self.pg.url, f"{redis_base}/0", f"{redis_base}/1", extra={
            "GRADE_DELIVERY_STALE_CLAIM_SECONDS": "5",
            "GRADE_DELIVERY_REQUEUE_AFTER_SECONDS": "3",
            "AGS_READ_TIMEOUT_SECONDS": "5",
        })
        bench.migrate()
        self.start_sandbox()
        self.start_worker()
        self.sweeper = threading.Thread(target=self._sweep_loop, daemon=True)
        self.sweeper.start()

    def start_sandbox(self) -> None:
        self.sandbox = bench.start_sandbox(self.processes, self.env, port=self.port, workers=1, threads=8)

    def restart_sandbox(self) -> None:
        bench.Processes.stop(self.sandbox)
        self.start_sandbox()

    def start_worker(self) -> None:
        self.worker_n += 1
        name = f"drills-w{self.worker_n}"
        self.worker = bench.start_worker(self.processes, self.env, name=name, concurrency=8, prefetch=4)
        bench.wait_for_workers([name])
        self.worker_down_on_purpose = False

    def kill_worker(self) -> None:
        self.worker_down_on_purpose = True
        bench.Processes.stop(self.worker, kill=True)

    def _supervise_worker(self) -> None:
        # As systemd's Restart=always does in production (README): Celery's worker can exit on a lost
        # broker connection (kombu's Redis transport raising while it restores unacked messages).
        if self.worker is not None and not self.worker_down_on_purpose and self.worker.poll() is not None:
            log(f"  worker exited (code {self.worker.returncode}); restarted, as its supervisor would")
            self.start_worker()

    def _sweep_loop(self) -> None:
        from django.db import close_old_connections

        from gradesync import sweeper

        self.sweeping.set()
        while self.sweeping.is_set():
            try:
                close_old_connections()
                self._supervise_worker()
                sweeper.sweep()
            except Exception as error:  # noqa: BLE001 — the sweeper outlives outages
                log(f"  sweeper: {type(error).__name__}: {str(error)[:100]}")
                from django.db import connection

                connection.close()
            time.sleep(1.0)

    def down(self) -> None:
        self.sweeping.clear()
        self.processes.stop_all()
        self.pg.stop()


# --- Recording and checking ---------------------------------------------------------------------


class Run:
    """One drill's registration, its cells and what was recorded."""

    def __init__(self, stage: Stage, name: str, profile: str = "canvas") -> None:
        self.name = name
        self.regs, self.cells = bench.seed(port=stage.port, registrations=1, courses=1, students=20, activities=3,
                                           profile=profile, in_flight=4, tag=f"{name[:8]}{uuid.uuid4().hex[:4]}")
        self.sandbox_registration = self.regs[0]["sandbox"]
        self.expected: dict[int, Decimal] = {}
        self.result_ids: list[int] = []
        self.failed_records = 0

    def record(self, indexes, score_of, *, rate: float = 40.0) -> None:
        from django.db import close_old_connections, connection
        from django.utils import timezone

        from gradesync import api

        for n, index in enumerate(indexes):
            cell = self.cells[index]
            score = score_of(index)
            deadline = time.time() + 60
            while True:
                try:
                    result = api.record_result(
                        source_ref=f"drill-{self.name}-{uuid.uuid4().hex}", lti_user=cell.lti_user, course=cell.course,
                        activity_key=cell.activity_key, activity_title=cell.activity_key,
                        resource_link=cell.resource_link, score=score, completed_at=timezone.now(),
                        launch=cell.launch, link_graded=True,
                    )
                    break
                except Exception as error:  # noqa: BLE001 — the caller's transaction failed; it tries again
                    self.failed_records += 1
                    connection.close()
                    if time.time() > deadline:
                        raise RuntimeError(f"record_result kept failing: {error}") from error
                    time.sleep(0.5)
                    close_old_connections()
            self.result_ids.append(result.pk)
            self.expected[index] = max(self.expected.get(index, Decimal(0)), score)
            time.sleep(1.0 / rate)

    def record_all(self, *, rate: float = 40.0, during=None) -> None:
        """First grades for every cell; `during` runs in a thread meanwhile; then newer grades for a quarter."""
        first = list(range(len(self.cells)))
        thread = threading.Thread(target=during, daemon=True) if during else None
        if thread:
            thread.start()
        self.record(first, lambda i: Decimal("0.60") + Decimal(i % 10) / 100, rate=rate)
        self.record(first[::4], lambda i: Decimal("0.95"), rate=rate)
        if thread:
            thread.join()

    def check(self, timeout: float) -> str | None:
        """None when everything holds, else why not."""
        from django.db import close_old_connections

        from gradesync.models import OPEN_STATUSES, Delivery, DeliveryStatus
        from sandbox_lms.models import SandboxResult

        close_old_connections()
        mine = Delivery.objects.filter(registration=self.regs[0]["tool"])
        deadline = time.time() + timeout
        while time.time() < deadline and mine.filter(status__in=OPEN_STATUSES).exists():
            time.sleep(0.5)
        statuses = dict((s, mine.filter(status=s).count()) for s in DeliveryStatus.values)
        problems = []
        if statuses[DeliveryStatus.PENDING] + statuses[DeliveryStatus.SENDING] + statuses[DeliveryStatus.RETRYING]:
            problems.append(f"not drained after {timeout:.0f} s: {statuses}")
        if statuses[DeliveryStatus.REFUSED] or statuses[DeliveryStatus.DEAD]:
            problems.append(f"visibly failed: {statuses}")
        held = {(r.line_item_id, r.user_id): r.result for r in SandboxResult.objects.filter(
            line_item_id__in={c.sandbox_line_item_id for c in self.cells})}
        wrong = []
        for index, score in self.expected.items():
            cell = self.cells[index]
            value = held.get((cell.sandbox_line_item_id, cell.sandbox_user_id))
            if value is None or abs(value - float(score) * 100) > 0.01:
                wrong.append(f"{cell.activity_key}/{cell.lti_user.sub[-6:]}: LMS {value}, policy {float(score) * 100}")
        if wrong:
            problems.append(f"{len(wrong)} cells differ from the policy, e.g. {wrong[:2]}")
        posts, duplicates, out_of_order = score_posts(self.sandbox_registration)
        deliveries = mine.count()
        if out_of_order:
            problems.append(f"{out_of_order} cells took an older timestamp after a newer one")
        if duplicates > 0.01 * max(deliveries, 1):
            problems.append(f"{duplicates} duplicate accepted POSTs for {deliveries} deliveries (> 1%)")
        log(f"  {self.name}: {deliveries} deliveries {statuses}; {posts} score POSTs, "
            f"{duplicates} duplicates; {self.failed_records} failed record attempts retried")
        return "; ".join(problems) or None


def score_posts(sandbox_registration) -> tuple[int, int, int]:
    """From the sandbox's request log of one registration: score POSTs, duplicates (a cell accepting the
    same score twice) and cells that accepted an older timestamp after a newer one."""
    from sandbox_lms.models import SandboxRequestLog

    accepted: dict[tuple[str, str], list[tuple[str, float]]] = {}
    posts = 0
    for entry in SandboxRequestLog.objects.filter(registration=sandbox_registration, method="POST",
                                                 path__contains="/scores").order_by("id"):
        posts += 1
        if entry.status is None or not 200 <= entry.status < 300:
            continue
        try:
            body = json.loads(entry.request_body)
        except ValueError:
            continue
        accepted.setdefault((entry.path.split("?")[0], body["userId"]), []).append((body["timestamp"], body.get("scoreGiven")))
    out_of_order = sum(1 for seq in accepted.values() if any(_ts(b[0]) < _ts(a[0]) for a, b in zip(seq, seq[1:])))
    duplicates = sum(len(seq) - len({score for _, score in seq}) for seq in accepted.values())
    return posts, duplicates, out_of_order


def _ts(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- The drills ---------------------------------------------------------------------------------


def drill_worker_kill9(stage: Stage) -> str | None:
    from sandbox_lms import api as sandbox

    run = Run(stage, "worker_kill9")
    # Slow answers, so that the kill finds grades claimed and in flight.
    sandbox.set_faults(registration=run.sandbox_registration, latency_ms=300)

    def fault() -> None:
        time.sleep(1.0)
        from gradesync.models import Delivery, DeliveryStatus

        in_flight = Delivery.objects.filter(registration=run.regs[0]["tool"], status=DeliveryStatus.SENDING).count()
        log(f"  {in_flight} deliveries claimed (sending) at the kill")
        stage.kill_worker()
        log("  worker killed (SIGKILL); restarting in 3 s")
        time.sleep(3.0)
        sandbox.set_faults(registration=run.sandbox_registration)
        stage.start_worker()

    run.record_all(during=fault)
    return run.check(60)


def drill_redis_restart(stage: Stage) -> str | None:
    run = Run(stage, "redis_restart")

    def fault() -> None:
        time.sleep(1.0)
        stage.redis.kill()
        log("  redis killed (SIGKILL, no persistence: the queue is lost); restarting in 5 s")
        time.sleep(5.0)
        stage.redis.start()

    run.record_all(during=fault)
    return run.check(90)


def drill_postgres_restart(stage: Stage) -> str | None:
    run = Run(stage, "postgres_restart")

    def fault() -> None:
        time.sleep(1.0)
        log("  restarting PostgreSQL (pg_ctl restart -m fast)")
        stage.pg.restart()

    run.record_all(during=fault)
    return run.check(90)


def drill_lms_outage(stage: Stage) -> str | None:
    from django.utils import timezone

    from sandbox_lms import api as sandbox

    run = Run(stage, "lms_outage")
    now = timezone.now()
    sandbox.set_faults(registration=run.sandbox_registration, outage_start=now,
                       outage_end=now + datetime.timedelta(seconds=30))
    log("  LMS outage for 30 s (503, Retry-After 60)")
    run.record_all()
    result = run.check(120)
    sandbox.set_faults(registration=run.sandbox_registration)
    return result


def _storm(stage: Stage, name: str, **faults) -> str | None:
    from sandbox_lms import api as sandbox

    run = Run(stage, name)

    def fault() -> None:
        sandbox.set_faults(registration=run.sandbox_registration, **faults)
        time.sleep(8.0)
        sandbox.set_faults(registration=run.sandbox_registration)
        log(f"  {name}: faults {faults} cleared after 8 s")

    run.record_all(during=fault)
    return run.check(90)


def drill_storm_5xx(stage: Stage) -> str | None:
    return _storm(stage, "storm_5xx", error_rate=0.7, error_status=502)


def drill_storm_429(stage: Stage) -> str | None:
    return _storm(stage, "storm_429", throttle_rate=0.7, retry_after=2)


def drill_token_401(stage: Stage) -> str | None:
    from sandbox_lms.models import SandboxToken

    run = Run(stage, "token_401")

    def fault() -> None:
        time.sleep(1.5)
        # The LMS forgets every token it issued (its token store restarted): its process memory too.
        SandboxToken.objects.filter(registration=run.sandbox_registration).delete()
        stage.restart_sandbox()
        log("  sandbox tokens deleted and the LMS restarted: the cached token is now answered 401")

    run.record_all(during=fault)
    why = run.check(60)
    from sandbox_lms.models import SandboxRegistration, SandboxRequestLog

    issued = SandboxRegistration.objects.get(pk=run.sandbox_registration.pk).tokens_issued
    # A 401 is logged before the sandbox knows the registration: count by this drill's line items.
    paths = [f"/api/lineitems/{c.sandbox_line_item_id}/" for c in run.cells[:: len(run.cells) // 3 or 1]]
    rejected = sum(SandboxRequestLog.objects.filter(status=401, path__contains=p).count() for p in set(paths))
    log(f"  token_401: {rejected} requests answered 401, {issued} tokens issued")
    if not rejected:
        why = "; ".join(filter(None, [why, "no request met a 401: the drill did not exercise the fault"]))
    elif issued > 2:
        why = "; ".join(filter(None, [why, f"{issued} tokens issued after one rejection (expected 2)"]))
    return why


def drill_duplicate_task(stage: Stage) -> str | None:
    from gradesync import queue
    from gradesync.models import Delivery

    from sandbox_lms import api as sandbox

    run = Run(stage, "duplicate_task")
    sandbox.set_faults(registration=run.sandbox_registration, latency_ms=100)
    done = threading.Event()

    def fault() -> None:
        # While grades are recorded and sent, every open delivery's task is queued twice more.
        while not done.is_set():
            for delivery_id in Delivery.objects.filter(registration=run.regs[0]["tool"]).values_list("pk", flat=True):
                queue.enqueue_delivery(delivery_id)
                queue.enqueue_delivery(delivery_id)
            time.sleep(0.3)

    thread = threading.Thread(target=fault, daemon=True)
    thread.start()
    run.record_all()
    time.sleep(2.0)
    done.set()
    thread.join()
    sandbox.set_faults(registration=run.sandbox_registration)
    return run.check(60)


DRILLS = {
    "worker_kill9": drill_worker_kill9,
    "redis_restart": drill_redis_restart,
    "postgres_restart": drill_postgres_restart,
    "lms_outage": drill_lms_outage,
    "storm_5xx": drill_storm_5xx,
    "storm_429": drill_storm_429,
    "token_401": drill_token_401,
    "duplicate_task": drill_duplicate_task,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated drill names")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--logs", default=str(ROOT / ".cache" / "drills"))
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(DRILLS))
        return 0
    names = [n for n in args.only.split(",") if n] or list(DRILLS)
    unknown = [n for n in names if n not in DRILLS]
    if unknown:
        sys.exit(f"drills: unknown drill(s) {unknown}; known: {', '.join(DRILLS)}")
    missing = [b for b in ("initdb", "pg_ctl", "redis-server", "psql") if not shutil.which(b)]
    if missing:
        sys.exit(f"drills: refusing to run: {', '.join(missing)} not found (a private PostgreSQL and Redis are started)")
    started = time.monotonic()
    stage = Stage(args)
    failures = 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        log("starting a private PostgreSQL, Redis, the sandbox LMS and a worker")
        stage.up()
        for name in names:
            log(f"drill {name} …")
            t0 = time.monotonic()
            try:
                why = DRILLS[name](stage)
            except Exception as error:  # noqa: BLE001
                why = f"{type(error).__name__}: {error}"
            if why:
                failures += 1
            log(f"drill {name} took {time.monotonic() - t0:.0f} s")
            print(f"drill {name}: {'PASS' if not why else f'FAIL ({why})'}", flush=True)
    finally:
        stage.down()
    log(f"{len(names) - failures}/{len(names)} drills passed in {time.monotonic() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
