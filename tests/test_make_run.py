"""`make run`'s processes retry a grade after the LMS's 503 with nobody touching it.

The test starts `make run` itself (migrate, demo data, then web + worker + beat from Procfile.dev under
honcho) on a free loopback port, a temporary SQLite file, broker folder and cache, and drives it only
over HTTP, as people would: the sandbox LMS starts answering 503, three students finish the demo quiz
at once (a small load on SQLite from the web and the worker together), the LMS recovers, and the
grades reach the instructor's gradebook because beat's sweeper re-queues them for the worker.
"""
from __future__ import annotations

import html
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

BASE_DIR = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 150  # migrate + demo data + three Django processes, on a busy two-core machine
# Beat sweeps every GRADE_SWEEP_INTERVAL_SECONDS (15); the retry waits 1-2 s first.
RECOVERY_SECONDS = 45


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class EmbeddedRun:
    """`make run` in a process group of its own, its output in a file."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = tmp
        self.log = tmp / "make-run.log"
        venv = Path(sys.prefix)
        env = {
            key: value for key, value in os.environ.items()
            if not key.startswith(("DJANGO_", "CELERY_", "MAKE", "MFLAGS")) and key not in {"CACHE_URL", "DEBUG", "PORT"}
        }
        env.update(
            DATABASE_URL=f"sqlite:///{tmp / 'db.sqlite3'}",
            CELERY_BROKER_URL="filesystem://localhost/",
            CELERY_BROKER_FOLDER=str(tmp / "broker"),
            CACHE_URL=f"filecache://{tmp / 'cache'}",
        )
        # -o: the virtualenv running this test is the one to use; make must not reinstall it.
        command = ["make", "--no-print-directory", "-o", f"{venv}/.installed", "run",
                   f"VENV={venv}", "HOST=127.0.0.1", f"PORT={self.port}"]
        self.output = self.log.open("w")
        self.make = subprocess.Popen(command, cwd=BASE_DIR, env=env, stdout=self.output, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.make.poll() is not None:
                pytest.fail(f"make run exited ({self.make.returncode}):\n{self.text()[-4000:]}")
            if "celery@" in self.text() and " ready." in self.text():
                try:
                    if requests.get(f"{self.url}/sandbox-lms/", timeout=5).status_code == 200:
                        return
                except requests.RequestException:
                    pass
            time.sleep(0.5)
        pytest.fail(f"make run did not serve with a worker ready in {STARTUP_SECONDS} s:\n{self.text()[-4000:]}")

    def worker_idle_after_a_503(self) -> bool:
        """The worker met a 503 ('retrying'), finished every grade task it received, and none is queued."""
        output = self.text()
        received = set(re.findall(r"deliver_grade\[([\w-]+)\] received", output))
        ended = set(re.findall(r"deliver_grade\[([\w-]+)\] (?:succeeded|raised|failed)", output))
        queued = list((self.tmp / "broker" / "messages").glob("*.msg"))
        return "'retrying'" in output and bool(received) and received <= ended and not queued

    def stop(self) -> list[int]:
        """Stop as Ctrl-C in its terminal does (honcho stops web, worker and beat); returns any process
        of theirs still running after that."""
        started = [int(pid) for pid in re.findall(r"started \(pid=(\d+)\)", self.text())]
        os.killpg(self.make.pid, signal.SIGINT)
        try:
            self.make.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.make.pid, signal.SIGKILL)
            self.make.wait(timeout=5)
        deadline = time.monotonic() + 10
        while any(map(_alive, started)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in started if _alive(pid)]
        for pid in left:
            try:
                os.killpg(pid, signal.SIGKILL)  # honcho starts each process in a session of its own
            except ProcessLookupError:
                pass
        self.output.close()
        return left


@pytest.fixture
def embedded_run(tmp_path):
    run = EmbeddedRun(tmp_path)
    try:
        run.wait_until_serving()
        yield run
    finally:
        left = run.stop()
        assert not left, f"processes left running after make run stopped: {left}"


def _autopost(text: str) -> tuple[str, dict[str, str]]:
    action = html.unescape(re.search(r'<form[^>]*action="([^"]+)"', text).group(1))
    fields = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', text))
    return action, {name: html.unescape(value) for name, value in fields.items()}


def _csrf(text: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', text).group(1)


def _sandbox_people(url: str) -> dict[str, tuple[str, str]]:
    """The sandbox's users as its home page lists them: name → (id, their roles in courses)."""
    home = requests.get(f"{url}/sandbox-lms/", timeout=10).text
    rows = re.findall(r'<tr><td>([^<]+?) <small>[^<]*</small></td>\s*<td>([^<]*)</td>\s*<td><button name="user" value="(\d+)"', home)
    return {name: (pk, courses) for name, courses, pk in rows}


def _act_as(url: str, user_id: str) -> tuple[requests.Session, str]:
    """A browser acting as a sandbox user; returns it and the address of the user's (demo) course."""
    browser = requests.Session()
    home = browser.post(f"{url}/sandbox-lms/act-as/", data={"user": user_id}, timeout=20)
    assert home.status_code == 200, home.text[:500]
    return browser, url + re.search(r'href="(/sandbox-lms/courses/\d+/)"', home.text).group(1)


def _finish_demo_quiz(url: str, user_id: str) -> int:
    """A student opens the demo course's quiz from the sandbox LMS, starts it and hands it in; returns
    the score the tool shows (a percentage)."""
    browser, course = _act_as(url, user_id)
    launch = re.search(r'href="(/sandbox-lms/links/\d+/launch/)"', browser.get(course, timeout=20).text).group(1)
    page = browser.get(url + launch, timeout=20)  # the LMS's login initiation, auto-posted
    action, fields = _autopost(page.text)
    page = browser.post(action, data=fields, timeout=20)  # the tool sends the browser to the LMS's auth
    action, fields = _autopost(page.text)
    page = browser.post(action, data=fields, timeout=20)  # the LMS posts the id_token to the tool
    assert page.status_code == 200 and "/start/" in page.text, page.text[:500]
    start = re.search(r'action="([^"]+/start/)"', page.text).group(1)
    page = browser.post(url + start, data={"csrfmiddlewaretoken": _csrf(page.text)}, timeout=20)
    submit = html.unescape(re.search(r'<form method="post" action="([^"]+/submit/)"', page.text).group(1))
    answers = {field: "1" for field in dict.fromkeys(re.findall(r'name="(q-\d+)"', page.text))}
    done = browser.post(url + submit, data={"csrfmiddlewaretoken": _csrf(page.text), **answers}, timeout=20)
    assert done.status_code == 200 and "has been recorded" in done.text, done.text[:500]
    return int(re.search(r"correct \((\d+)%\)", done.text).group(1))


def _set_faults(url: str, registration: str, **faults: str) -> None:
    answer = requests.post(f"{url}/sandbox-lms/registrations/{registration}/", data={"action": "faults", **faults}, timeout=10)
    assert answer.status_code == 200 and "Faults saved." in answer.text


def _gradebook_scores(url: str, instructor: str) -> dict[str, float | None]:
    """The instructor's gradebook in the sandbox LMS: student name → the quiz's score as a percentage
    of its points, None when the LMS has none."""
    browser, course = _act_as(url, instructor)
    page = browser.get(f"{course}gradebook/", timeout=20).text
    points = float(re.search(r"out of ([\d.]+)", page).group(1))
    rows = re.findall(r"<tr><td>([^<]+)</td>\s*<td>(.*?)</td>", page, re.S)
    return {
        name.strip(): (round(float(m.group(1)) * 100 / points) if (m := re.search(r"<strong>([\d.]+)</strong>", cell)) else None)
        for name, cell in rows
    }


def test_make_run_retries_grades_after_the_lms_503_with_nobody_touching_them(embedded_run):
    url = embedded_run.url
    people = _sandbox_people(url)
    students = sorted(name for name, (_, courses) in people.items() if "(Learner)" in courses)
    instructor = next(pk for pk, courses in people.values() if "(Instructor)" in courses)
    assert len(students) == 3, people  # the demo course's
    registration = re.search(r'href="/sandbox-lms/registrations/(\d+)/"', requests.get(f"{url}/sandbox-lms/", timeout=10).text).group(1)

    _set_faults(url, registration, error_rate="1")  # every AGS request (token, score) answered 503
    with ThreadPoolExecutor(max_workers=3) as pool:  # three students hand in at the same moment
        shown = dict(zip(students, pool.map(lambda name: _finish_demo_quiz(url, people[name][0]), students)))

    # Until the worker has tried every grade and holds no task: from then on only beat can wake them.
    deadline = time.monotonic() + 30
    while not embedded_run.worker_idle_after_a_503():
        assert time.monotonic() < deadline, "the worker did not try the grades:\n" + embedded_run.text()[-3000:]
        time.sleep(0.5)
    assert "<strong>503</strong>" in requests.get(f"{url}/sandbox-lms/log/", timeout=20).text
    assert _gradebook_scores(url, instructor) == {name: None for name in students}

    _set_faults(url, registration)  # the LMS is back; nobody touches the grades
    deadline = time.monotonic() + RECOVERY_SECONDS
    while True:
        scores = _gradebook_scores(url, instructor)
        if all(scores.get(name) is not None for name in students):
            break
        assert time.monotonic() < deadline, f"grades not in the gradebook {RECOVERY_SECONDS} s after the LMS recovered: {scores}"
        time.sleep(1)

    assert scores == shown  # each student's own score, as the tool showed it
    output = embedded_run.text()
    # The worker met the 503 itself, then beat's sweeper queued the grades again.
    assert re.search(r"'retrying'.*'requeued': [1-9].*'sent'", output, re.S)
    assert "database is locked" not in output
    assert "Traceback" not in output, output[max(0, output.find("Traceback") - 2000):][:6000]
    assert not re.search(r'HTTP/1\.1" 500 ', output)
    assert "No hostname was supplied" not in output and "models.W040" not in output
