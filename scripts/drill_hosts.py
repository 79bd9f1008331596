#!/usr/bin/env python
"""The multi-host drill: production's shape on one machine, in network namespaces, losing hosts while
students work.

    sudo .venv/bin/python scripts/drill_hosts.py      (make drill-hosts; needs root for `ip netns`)

It makes a bridge and one network namespace per host (10.77.0.0/24, addresses only the drill's own;
nothing is sent anywhere else), and removes them all when it ends, whatever happens:

    db     10.77.0.10  PostgreSQL and Redis (private, throwaway)
    lms    10.77.0.11  the sandbox LMS (one gevent worker, so it counts every score POST in flight)
    lb     10.77.0.20  HAProxy, health-checking the web hosts' /readyz
    web1/2 10.77.0.21/22  gunicorn (the tool)
    work1/2 10.77.0.31/32  a Celery worker each (16 threads)
    beat1/2 10.77.0.41/42  Celery beat each, one scheduling at a time (config.beat)

Students launch quizzes from the LMS through the load balancer, take them and submit (a third take a
second attempt), a browser's retry on any error. Meanwhile: a worker host is killed (every process,
SIGKILL) and comes back 12 s later; the other worker host and a web host lose their network for 30 s;
the beat host that schedules is killed for good; PostgreSQL restarts. Then it checks: every grade the
tool recorded is in the LMS with the policy's (highest) score and every submit a student saw succeed was
recorded; no cell took an older timestamp after a newer one; duplicate score POSTs ≤ 1 %; the LMS never
saw more score POSTs in flight at once than the registration's limit (across both worker hosts); the
surviving beat resumed periodic work within 60 s; /metrics through the load balancer shows nothing open.
Its last line: `drill-hosts: PASS …` or `drill-hosts: FAIL (why) …`.
"""
from __future__ import annotations

import argparse
import collections
import html
import os
import random
import re
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

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench_delivery as bench  # noqa: E402
import drills  # noqa: E402

ROOT = bench.ROOT
log = bench.log
NET = "10.77.0"
BRIDGE = "dh-br0"
HOSTS = {"db": 10, "lms": 11, "lb": 20, "web1": 21, "web2": 22, "work1": 31, "work2": 32, "beat1": 41, "beat2": 42}
PORT = 8000
POINTS = 20  # each quiz is worth this many points in the LMS
IN_FLIGHT = 4  # the registration's max_requests_in_flight
METRICS_TOKEN = uuid.uuid4().hex
LMS_LOG_FLUSH_SECONDS = 1.0  # sandbox_lms.fast.LOG_FLUSH_SECONDS, at most


def ip(host: str) -> str:
    return f"{NET}.{HOSTS[host]}"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=30)


# --- The hosts ----------------------------------------------------------------------------------


class Network:
    """A bridge and a namespace per host; `cut`/`mend` a host's link; `kill` every process of a host."""

    def up(self) -> None:
        self.down()  # what an interrupted run left
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{NET}.1/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        for host in HOSTS:
            namespace, veth = f"dh-{host}", f"dhv-{host}"
            sh("ip", "netns", "add", namespace)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            sh("ip", "link", "set", veth, "master", BRIDGE, "up")
            sh("ip", "netns", "exec", namespace, "ip", "addr", "add", f"{ip(host)}/24", "dev", "eth0")
            sh("ip", "netns", "exec", namespace, "ip", "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up")

    @staticmethod
    def run_in(host: str) -> list[str]:
        return ["ip", "netns", "exec", f"dh-{host}"]

    @staticmethod
    def pids(host: str) -> list[int]:
        done = sh("ip", "netns", "pids", f"dh-{host}", check=False)
        return [int(pid) for pid in done.stdout.split()]

    def kill(self, host: str) -> int:
        pids = self.pids(host)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    @staticmethod
    def cut(host: str) -> None:
        sh("ip", "link", "set", f"dhv-{host}", "down")

    @staticmethod
    def mend(host: str) -> None:
        sh("ip", "link", "set", f"dhv-{host}", "up")

    def down(self) -> None:
        for host in HOSTS:
            if Path(f"/run/netns/dh-{host}").exists():
                self.kill(host)
                sh("ip", "netns", "del", f"dh-{host}", check=False)
        sh("ip", "link", "del", BRIDGE, check=False)


HAPROXY = """global
    maxconn 2000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 15s
    timeout check 5s
    retries 2
    option redispatch
frontend tool
    bind {lb}:{port}
    default_backend web
backend web
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 1s fall 3 rise 2
    server web1 {web1}:{port} check
    server web2 {web2}:{port} check
"""


def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    answer = None
    while time.time() < deadline:
        try:
            answer = requests.get(url, timeout=5)
            if answer.status_code == 200:
                return
        except requests.RequestException as error:
            answer = error
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s: {getattr(answer, 'text', answer)!s:.300}")


PGBOUNCER = """[databases]
drills = host={db} port=5432 dbname=drills user=postgres
[pgbouncer]
listen_addr = {db}
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/userlist.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = 40
server_reset_query =
server_login_retry = 1
ignore_startup_parameters = extra_float_digits,options
logfile =
"""
PGBOUNCER_PORT = 6432


class Fleet:
    """The processes on the hosts, started and restarted as each host's supervisor would."""

    def __init__(self, network: Network, logs: Path, pgbouncer: bool = False) -> None:
        self.pgbouncer = pgbouncer
        self.network = network
        self.processes = bench.Processes(logs)
        self.dir = Path(tempfile.mkdtemp(prefix="drill-hosts-"))
        self.pg = drills.PrivatePostgres(5432, host=ip("db"), prefix=tuple(network.run_in("db")))
        self.redis = drills.PrivateRedis(6379, self.processes, host=ip("db"), prefix=tuple(network.run_in("db")))
        self.env: dict[str, str] = {}
        self.tool_env: dict[str, str] = {}  # env, with the pooler's address when --pgbouncer
        self.running: dict[str, subprocess.Popen] = {}
        self.down_hosts: set[str] = set()  # killed or cut on purpose: not restarted meanwhile

    def up(self) -> None:
        self.pg.init()
        self.pg.create_database()
        self.redis.start()
        redis_base = f"redis://{ip('db')}:6379"
        database_url, pooling = self.pg.url, "session"
        if self.pgbouncer:
            # The tool's web, worker and beat hosts through PgBouncer in transaction pooling; migrations and
            # the drill's own checks straight to PostgreSQL, as the README says.
            self.start("pgbouncer")
            bench.wait_for_port(PGBOUNCER_PORT, host=ip("db"), timeout=30)
            database_url, pooling = f"postgres://postgres@{ip('db')}:{PGBOUNCER_PORT}/drills", "transaction"
        self.env = bench.configure_django(self.pg.url, f"{redis_base}/0", f"{redis_base}/1", extra={
            "ALLOWED_HOSTS": ",".join(ip(h) for h in ("lb", "web1", "web2", "lms")),
            "TOOL_BASE_URL": f"http://{ip('lb')}:{PORT}",
            "LOG_LEVEL": "INFO",
            "METRICS_TOKEN": METRICS_TOKEN,
            "HEALTH_DETAIL_NETWORKS": f"{NET}.0/24",  # /readyz says why to the drill (and to HAProxy: harmless here)
            # Shorter than production (300 s, 30 s), so the drill sees claims of dead workers taken back.
            "GRADE_DELIVERY_STALE_CLAIM_SECONDS": "10",
            "GRADE_DELIVERY_REQUEUE_AFTER_SECONDS": "5",
            "AGS_READ_TIMEOUT_SECONDS": "5",
        })
        bench.migrate()
        # The tool's hosts use the pooler (when asked); the LMS is another product: it connects directly.
        self.tool_env = {**self.env, "DATABASE_URL": database_url, "DATABASE_POOLING": pooling}
        for host in ("lms", "web1", "web2", "work1", "work2", "beat1", "beat2", "lb"):
            self.start(host)
        for host in ("lms", "web1", "web2", "lb"):
            bench.wait_for_port(PORT, host=ip(host), timeout=60)
        wait_ready(f"http://{ip('lb')}:{PORT}/readyz")  # HAProxy has seen a web host pass its checks


    def command(self, host: str) -> tuple[list[str], dict[str, str]]:
        venv = bench.VENV_BIN
        if host == "lms":
            return [str(venv / "gunicorn"), "sandbox_lms.wsgi:application", "--bind", f"{ip(host)}:{PORT}",
                    "--worker-class", "gevent", "--workers", "1", "--worker-connections", "200"], \
                {**self.env, "DJANGO_SETTINGS_MODULE": "sandbox_lms.server_settings"}
        if host.startswith("web"):
            return [str(venv / "gunicorn"), "config.wsgi:application", "--bind", f"{ip(host)}:{PORT}",
                    "--workers", "2", "--threads", "8", "--timeout", "30",
                    # Each request with its time (µs), in the host's log: what was slow while a host was away.
                    "--access-logfile", "-", "--access-logformat", "%(t)s %(r)s %(s)s %(D)s"], self.tool_env
        if host.startswith("work"):
            return [str(venv / "celery"), "-A", "config", "worker", "--pool=threads", "--concurrency=16",
                    "-Q", "grades,resync,celery", "--loglevel=INFO", "-n", f"{host}@drill"], self.tool_env
        if host.startswith("beat"):
            return [str(venv / "celery"), "-A", "config", "beat", "--scheduler", "config.beat:LeaderScheduler",
                    "-s", str(self.dir / f"{host}-schedule"), "--loglevel=INFO"], self.tool_env
        if host == "pgbouncer":
            (self.dir / "userlist.txt").write_text('"postgres" ""\n')
            config = self.dir / "pgbouncer.ini"
            config.write_text(PGBOUNCER.format(db=ip("db"), port=PGBOUNCER_PORT, dir=self.dir))
            shutil.chown(self.dir, "postgres")
            for path in (config, self.dir / "userlist.txt"):
                shutil.chown(path, "postgres")
            # PgBouncer refuses to run as root.
            return ["runuser", "-u", "postgres", "--", shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", str(config)], dict(os.environ)
        if host == "lb":
            config = self.dir / "haproxy.cfg"
            config.write_text(HAPROXY.format(lb=ip("lb"), web1=ip("web1"), web2=ip("web2"), port=PORT))
            return [shutil.which("haproxy") or "/usr/sbin/haproxy", "-f", str(config), "-db"], self.env
        raise ValueError(host)

    def start(self, host: str) -> None:
        args, env = self.command(host)
        where = "db" if host == "pgbouncer" else host  # the pooler runs beside PostgreSQL
        self.running[host] = self.processes.start(host, [*self.network.run_in(where), *args], env)

    def supervise(self) -> None:
        """Restart a process that exited on a host that is up (systemd's Restart=always)."""
        for host, process in list(self.running.items()):
            if host not in self.down_hosts and process.poll() is not None:
                log(f"  {host}: process exited ({process.returncode}); restarted, as its supervisor would")
                self.start(host)

    def kill_host(self, host: str) -> None:
        self.down_hosts.add(host)
        killed = self.network.kill(host)
        log(f"  {host}: killed {killed} processes (SIGKILL)")

    def boot_host(self, host: str) -> None:
        self.down_hosts.discard(host)
        self.start(host)
        log(f"  {host}: back up")

    def down(self) -> None:
        self.processes.stop_all()
        for host in HOSTS:
            self.network.kill(host)
        self.pg.stop(keep_log=self.processes.log_dir / "postgresql.log")
        shutil.rmtree(self.dir, ignore_errors=True)


# --- The course and its students ----------------------------------------------------------------


class Course:
    """A sandbox course with three graded quizzes placed by its instructor through the load balancer."""

    def __init__(self, students: int) -> None:
        from courseware.models import Activity, ActivityKind, AttemptAllowance, Question
        from institutions.models import Course as ToolCourse, Institution
        from sandbox_lms import api as sandbox
        from tests import lms

        institution = Institution.objects.create(name="Drill University", slug=f"drill-{uuid.uuid4().hex[:6]}")
        self.connected = lms.connect(f"http://{ip('lb')}:{PORT}", institution, profile="canvas",
                                     lms_url=f"http://{ip('lms')}:{PORT}",
                                     student_names=tuple(f"Student {n}" for n in range(students)))
        self.connected.registration.profile.max_requests_in_flight = IN_FLIGHT
        self.connected.registration.profile.save()
        self.quizzes = []
        for q in range(3):
            quiz = Activity.objects.create(slug=f"drill-quiz-{q}-{uuid.uuid4().hex[:4]}", title=f"Quiz {q}: ports",
                                           kind=ActivityKind.CUSTOM_QUIZ, position=q + 1, default_points=10)
            for i in range(4):
                Question.objects.create(activity=quiz, position=i, prompt=f"Question {i}?", choices=["a", "b", "c", "d"], answer=i % 4)
            self.quizzes.append(quiz)
        done = lms.deep_link(lms.browser(), self.connected, {quiz.pk: {"graded": True, "points": POINTS} for quiz in self.quizzes})
        if done.status_code != 200:
            raise RuntimeError(f"deep linking through the load balancer failed: {done.status_code} {done.text[:300]}")
        links = {link.custom.get("activity_id"): link for link in self.connected.course.resource_links.all()}
        self.links = [links[str(quiz.pk)] for quiz in self.quizzes]
        # The instructor allows any number of attempts (a custom quiz allows one by default).
        course = ToolCourse.objects.get(context__id_on_platform=self.connected.course.context_id)
        AttemptAllowance.objects.bulk_create([AttemptAllowance(course=course, activity=quiz, attempts_allowed=None)
                                              for quiz in self.quizzes])
        self.sandbox = sandbox


class Student:
    """Takes each quiz once (a third of them twice) through the load balancer, retrying as a browser would."""

    def __init__(self, course: Course, user, rng: random.Random) -> None:
        self.course, self.user, self.rng = course, user, rng
        self.confirmed: dict[int, list[Decimal]] = {}  # quiz index → scores of submits whose result page showed
        self.retries = 0
        self.failed = 0
        self.why: collections.Counter = collections.Counter()  # what made the student click again
        self.pages: Path | None = None  # where the page of each new reason is kept

    def work(self, until: float) -> None:
        for index in range(3):
            for _ in range(2 if self.rng.random() < 1 / 3 else 1):
                time.sleep(self.rng.uniform(2.0, 8.0))  # reading the course page, then the quiz
                if time.monotonic() > until:
                    return
                correct = self.rng.randint(1, 4)
                if self.take(index, correct):
                    self.confirmed.setdefault(index, []).append(Decimal(correct) / 4)
                else:
                    self.failed += 1

    def take(self, index: int, correct: int) -> bool:
        from tests import lms

        for _ in range(12):
            http = lms.browser()
            page = None
            try:
                page = lms.launch(http, user=self.user, resource_link=self.course.links[index])
                if page.status_code != 200 or "Quiz" not in page.text:
                    raise RuntimeError(f"launch answered {page.status_code}")
                base = re.match(r"https?://[^/]+", page.url).group(0)
                if 'name="q-' not in page.text:
                    start = re.search(r'action="([^"]+/start/)"', page.text).group(1)
                    page = http.post(f"{base}{start}", data={"csrfmiddlewaretoken": lms.csrf_token(page.text)}, timeout=20)
                    if page.status_code != 200:
                        raise RuntimeError(f"start answered {page.status_code}")
                form_action = re.search(r'<form method="post" action="([^"]+/submit/)"', page.text)
                if form_action is None:
                    raise RuntimeError(f"no quiz form on the page ({page.status_code} {page.url})")
                action = html.unescape(form_action.group(1))
                questions = list(dict.fromkeys(re.findall(r'name="(q-\d+)"', page.text)))
                form = {"csrfmiddlewaretoken": lms.csrf_token(page.text)}
                for n, field in enumerate(questions):  # question n's answer is choice n % 4
                    form[field] = str(n % 4 if n < correct else (n + 1) % 4)
                done = http.post(f"{base}{action}", data=form, timeout=20)
                if done.status_code == 200 and "/attempts/" in done.url:
                    return True
                raise RuntimeError(f"submit answered {done.status_code}")
            except Exception as error:  # noqa: BLE001 — a browser's user clicks again
                from django.db import connection

                connection.close()  # this thread's connection to the database (start_launch), if it broke
                self.retries += 1
                reason = f"{type(error).__name__}: {str(error)[:80]}"
                if page is not None and reason not in self.why and self.pages is not None:
                    (self.pages / f"{self.user.pk}-{len(self.why)}.html").write_text(f"<!-- {reason} -->\n{page.text}")
                self.why[reason] += 1
                time.sleep(2.0)
        return False


# --- The faults ---------------------------------------------------------------------------------


class Faults:
    def __init__(self, fleet: Fleet, network: Network) -> None:
        self.fleet, self.network = fleet, network
        self.beat_killed_at: float | None = None
        self.beat_killed: str | None = None
        self.notes: list[str] = []

    def leading_beat(self) -> str | None:
        from config.beat import LEADER_KEY, _redis_for
        from config.celery import app

        holder = _redis_for(app).get(LEADER_KEY)
        if not holder:
            return None
        pid = int(holder.decode().split(":")[1])
        for host in ("beat1", "beat2"):
            if pid in self.network.pids(host):
                return host
        return None

    def run(self, started: float) -> None:
        def at(second: float) -> None:
            time.sleep(max(started + second - time.monotonic(), 0))

        at(8)
        self.fleet.kill_host("work1")
        at(20)
        self.fleet.boot_host("work1")
        at(26)
        for host in ("work2", "web2"):
            self.fleet.down_hosts.add(host)
            self.network.cut(host)
        log("  work2, web2: network cut for 30 s")
        at(56)
        for host in ("work2", "web2"):
            self.network.mend(host)
            self.fleet.down_hosts.discard(host)
        log("  work2, web2: network back")
        at(62)
        self.beat_killed = self.leading_beat()
        if self.beat_killed is None:
            self.notes.append("no beat held the lock at the kill")
        else:
            self.beat_killed_at = time.time()
            self.fleet.kill_host(self.beat_killed)
        at(76)
        log("  PostgreSQL: restarting (pg_ctl restart -m fast)")
        self.fleet.pg.restart()


def beat_resumed_seconds(killed_at: float, timeout: float = 90.0) -> float | None:
    """Seconds from the kill until the surviving beat published periodic work (its heartbeat mark)."""
    from django.core.cache import cache

    from gradesync import heartbeats

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            mark = cache.get(heartbeats.BEAT_KEY)
        except Exception:  # noqa: BLE001 — Redis is fine; a blip is retried
            mark = None
        if mark and mark["at"] > killed_at:
            return mark["at"] - killed_at
        time.sleep(0.5)
    return None


# --- The checks ---------------------------------------------------------------------------------


def check(course: Course, students: list[Student], drain_timeout: float) -> tuple[list[str], dict[str, object]]:
    from django.db import close_old_connections
    from django.db.models import Max

    from gradesync.models import OPEN_STATUSES, Delivery, DeliveryStatus, Result

    close_old_connections()
    registration = course.connected.registration
    mine = Delivery.objects.filter(registration=registration)
    deadline = time.time() + drain_timeout
    while time.time() < deadline and mine.filter(status__in=OPEN_STATUSES).exists():
        time.sleep(1.0)
    problems: list[str] = []
    statuses = {s: mine.filter(status=s).count() for s in DeliveryStatus.values}
    if sum(statuses[s] for s in OPEN_STATUSES):
        problems.append(f"not drained after {drain_timeout:.0f} s: {statuses}")
    if statuses[DeliveryStatus.REFUSED] or statuses[DeliveryStatus.DEAD]:
        problems.append(f"visibly failed: {statuses}")
    # The tool's ledger: the policy's (highest) score of each cell.
    ledger = {
        (row["lti_user__sub"], row["activity_key"]): row["best"]
        for row in Result.objects.filter(course__context__deployment__registration=registration, is_eligible=True)
        .values("lti_user__sub", "activity_key").annotate(best=Max("score"))
    }
    lost, wrong = [], []
    for student in students:
        for index, scores in student.confirmed.items():
            key = (student.user.sub, str(course.quizzes[index].pk))
            if key not in ledger or ledger[key] < max(scores):
                lost.append(f"{student.user.name}/quiz {index}: saw {max(scores)}, ledger {ledger.get(key)}")
    for index, link in enumerate(course.links):
        gradebook = course.sandbox.grades(line_item=link.line_items.get())
        for (sub, activity_key), best in ledger.items():
            if activity_key != str(course.quizzes[index].pk):
                continue
            cell = gradebook.get(sub)
            held = None if cell is None else cell.result
            if held is None or abs(held - float(best) * POINTS) > 0.01:
                wrong.append(f"{sub[-6:]}/quiz {index}: LMS {held}, policy {float(best) * POINTS}")
    if lost:
        problems.append(f"{len(lost)} submits a student saw succeed are not in the ledger, e.g. {lost[:2]}")
    if wrong:
        problems.append(f"{len(wrong)} cells differ from the policy, e.g. {wrong[:2]}")
    time.sleep(2 * LMS_LOG_FLUSH_SECONDS)  # the LMS writes its request log in batches
    posts, duplicates, out_of_order = drills.score_posts(course.connected.seeded.registration)
    deliveries = mine.count()
    if out_of_order:
        problems.append(f"{out_of_order} cells took an older timestamp after a newer one")
    if duplicates > 0.01 * max(deliveries, 1):
        problems.append(f"{duplicates} duplicate accepted POSTs for {deliveries} deliveries (> 1 %)")
    tally = requests.get(f"http://{ip('lms')}:{PORT}/sandbox-lms/api/in-flight", timeout=10).json()["most_in_flight"]
    most = tally.get(str(course.connected.seeded.registration.pk), 0)
    if most > IN_FLIGHT:
        problems.append(f"the LMS saw {most} score POSTs in flight at once (limit {IN_FLIGHT})")
    figures = {"grades": len(ledger), "deliveries": deliveries, "posts": posts, "duplicates": duplicates,
               "out_of_order": out_of_order, "most_in_flight": most, "lost": len(lost), "wrong": len(wrong)}
    return problems, figures


def secrets_in_logs(logs: Path) -> list[str]:
    """Every host's log of the whole run, searched for what must never be logged: the access tokens the
    LMS issued, the tool's private keys, the Django secret key, a bearer token or a signed JWT."""
    from lti_tool.models import Key

    from sandbox_lms.models import SandboxToken

    secrets = [token for token in SandboxToken.objects.values_list("token", flat=True)]
    secrets += [line for pem in Key.objects.values_list("private_key", flat=True)
                for line in pem.splitlines() if len(line) > 40]  # each base64 line of each private key
    secrets.append(os.environ["SECRET_KEY"])
    patterns = [re.compile(r"Bearer\s+(?!\[redacted\])[A-Za-z0-9\-._~+/]{16,}"), re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+"),
                re.compile(r"BEGIN (RSA )?PRIVATE KEY")]
    found = []
    for log_file in sorted(logs.glob("*.log")):
        text = log_file.read_text(errors="replace")
        found += [f"{log_file.name}: a secret value" for secret in secrets if secret and secret in text]
        found += [f"{log_file.name}: {match.group(0)[:24]}…" for pattern in patterns for match in pattern.finditer(text)]
    return found


def metrics_open() -> float | None:
    """Open deliveries as /metrics says, scraped through the load balancer with the token."""
    answer = requests.get(f"http://{ip('lb')}:{PORT}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    if answer.status_code != 200:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in answer.text.splitlines()
               if line.startswith("gradesync_deliveries_open{"))


# --- Main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=100.0, help="how long students keep starting quizzes")
    parser.add_argument("--logs", default=str(ROOT / ".cache" / "drill-hosts"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pgbouncer", action="store_true",
                        help="the tool's hosts reach PostgreSQL through PgBouncer in transaction pooling (DATABASE_POOLING=transaction)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("drill-hosts: needs root (it makes network namespaces with `ip netns`)")
    missing = [b for b in ("ip", "haproxy", "initdb", "pg_ctl", "redis-server", "psql", *(["pgbouncer"] if args.pgbouncer else []))
               if not shutil.which(b) and not Path(f"/usr/sbin/{b}").exists()]
    if missing:
        sys.exit(f"drill-hosts: refusing to run: {', '.join(missing)} not found (make drill-hosts installs haproxy)")
    began = time.monotonic()
    load_start = bench.load_average()
    network = Network()
    fleet = Fleet(network, Path(args.logs), pgbouncer=args.pgbouncer)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    problems: list[str] = []
    figures: dict[str, object] = {}
    try:
        log("making 9 hosts in network namespaces on 10.77.0.0/24")
        network.up()
        log("starting PostgreSQL and Redis (db), the sandbox LMS (lms), HAProxy (lb), 2 web, 2 worker, 2 beat hosts")
        fleet.up()
        course = Course(args.students)
        rng = random.Random(args.seed)
        students = [Student(course, user, random.Random(rng.random())) for user in course.connected.students]
        pages = Path(args.logs) / "pages"
        shutil.rmtree(pages, ignore_errors=True)
        pages.mkdir(parents=True)
        for student in students:
            student.pages = pages
        faults = Faults(fleet, network)
        started = time.monotonic()
        until = started + args.seconds
        threads = [threading.Thread(target=s.work, args=(until,), daemon=True) for s in students]
        fault_thread = threading.Thread(target=faults.run, args=(started,), daemon=True)
        log(f"{len(students)} students take 3 quizzes through the load balancer for {args.seconds:.0f} s; faults at 8–76 s")
        for thread in [*threads, fault_thread]:
            thread.start()
        while any(t.is_alive() for t in threads) or fault_thread.is_alive():
            fleet.supervise()
            time.sleep(1.0)
        resumed = beat_resumed_seconds(faults.beat_killed_at) if faults.beat_killed_at else None
        problems, figures = check(course, students, drain_timeout=120)
        problems += faults.notes
        if resumed is None or resumed > 60:
            problems.append(f"periodic work did not resume on the surviving beat within 60 s ({resumed})")
        why = sum((s.why for s in students), collections.Counter())
        if why:
            log(f"  students clicked again {sum(why.values())} times: {why.most_common(4)}")
        failed = sum(s.failed for s in students)
        if failed:
            problems.append(f"{failed} quiz submits failed after 12 tries each")
        # A deadlock or a 500 is a bug even when a retry hid it from the students.
        deadlocks = (fleet.pg.dir / "pg.log").read_text(errors="replace").count("deadlock detected")
        answers = [line for host in ("web1", "web2")
                   for line in (Path(args.logs) / f"{host}.log").read_text(errors="replace").splitlines()
                   if re.search(r" HTTP/1\.\d 5\d\d \d+$", line) and "/readyz" not in line]
        server_errors = len(answers)  # students' requests answered 5xx (503 while PostgreSQL restarted)
        errors_500 = sum(" 500 " in line for line in answers)
        if deadlocks:
            problems.append(f"{deadlocks} deadlocks in PostgreSQL's log")
        if errors_500:
            problems.append(f"{errors_500} answers of 500 from the web hosts")
        leaks = secrets_in_logs(Path(args.logs))
        if leaks:
            problems.append(f"secrets in the hosts' logs: {leaks[:3]}")
        figures.update({"deadlocks": deadlocks, "web_5xx": server_errors, "secrets_in_logs": len(leaks)})
        open_now = metrics_open()
        if open_now != 0:
            problems.append(f"/metrics through the load balancer says {open_now} deliveries open")
        figures.update({"beat_resumed_s": None if resumed is None else round(resumed, 1),
                        "student_retries": sum(s.retries for s in students), "submits_confirmed":
                        sum(len(v) for s in students for v in s.confirmed.values())})
    except Exception as error:  # noqa: BLE001 — reported as the drill's failure
        problems.append(f"{type(error).__name__}: {error}")
    finally:
        try:
            fleet.down()
        finally:
            network.down()
    seconds = time.monotonic() - began
    verdict = "PASS" if not problems else f"FAIL ({'; '.join(problems)})"
    details = " ".join(f"{k}={v}" for k, v in figures.items())
    mode = " pgbouncer=transaction" if args.pgbouncer else ""
    print(f"drill-hosts{mode}: {verdict} {details} seconds={seconds:.0f} load={load_start}", flush=True)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
