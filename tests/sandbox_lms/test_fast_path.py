"""The scores endpoint through the fast WSGI front (`sandbox_lms.fast`, what `sandbox_lms.wsgi` serves):
the same answers as the Django view, every exchange in the request log (written in batches)."""
from __future__ import annotations

import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import requests
from django.core.handlers.wsgi import WSGIHandler

from sandbox_lms import api, fast

from .conftest import ServiceClient, now_iso

pytestmark = pytest.mark.django_db(transaction=True)

ATTEMPTS_BODY = {"errors": {"type": "unprocessable_entity",
                            "message": "The maximum number of allowed attempts has been reached for this submission"}}


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fast_url(live_server):
    """fast_url(url) → the same URL on a server whose WSGI app is `ScoresFront(Django)`."""
    server = make_server("127.0.0.1", 0, fast.ScoresFront(WSGIHandler()), server_class=_Server,
                         handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    yield lambda url: url.replace(live_server.url, base)
    server.shutdown()
    server.server_close()
    fast.close()


def test_a_score_is_taken_and_logged(sandbox, fast_url):
    service = ServiceClient(sandbox)
    student = sandbox.students[0]
    stamp = now_iso()

    response = service.post_score(student, line_item_url=fast_url(sandbox.line_item_url), scoreGiven=17,
                                  scoreMaximum=20, comment="Well done", timestamp=stamp)

    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["resultUrl"].endswith(f"/results/{student.pk}")
    cell = api.grades(line_item=sandbox.line_item)[student.sub]
    assert cell.result == pytest.approx(85.0) and cell.comment == "Well done"
    entry = api.request_log(registration=sandbox.registration, kind="scores")[-1]  # flushes the batch first
    assert entry.status == 200 and entry.method == "POST" and entry.path.endswith("/scores")
    assert entry.request_headers["User-Agent"] == "sandbox-tests" and entry.request_headers["Authorization"].endswith("…")
    assert '"scoreGiven": 17' in entry.request_body and "resultUrl" in entry.response_body


def test_every_exchange_of_a_burst_is_logged(sandbox, fast_url):
    service = ServiceClient(sandbox)
    url = fast_url(sandbox.line_item_url)

    statuses = [service.post_score(sandbox.students[n % 3], line_item_url=url, timestamp=now_iso(n)).status_code
                for n in range(30)]

    assert statuses == [200] * 30
    assert len(api.request_log(registration=sandbox.registration, kind="scores")) == 30


def test_validation_and_refusals(sandbox, fast_url):
    service = ServiceClient(sandbox)
    url = fast_url(sandbox.line_item_url)
    student = sandbox.students[0]

    assert service.post_score(student, line_item_url=url, timestamp=now_iso(10)).status_code == 200
    stale = service.post_score(student, line_item_url=url, timestamp=now_iso(5))
    missing = service.post_score(student, line_item_url=url, activityProgress=None)
    naive = service.post_score(student, line_item_url=url, timestamp="2031-03-01T10:00:00")
    negative = service.post_score(student, line_item_url=url, scoreGiven=-1)
    teacher = service.post_score(sandbox.instructor, line_item_url=url)
    media = service.call("POST", url + "/scores", data=b"{}", headers={"Content-Type": "application/json"})
    not_json = service.call("POST", url + "/scores", data=b"[1]", headers={"Content-Type": api.SCORE_MEDIA_TYPE})
    no_token = requests.post(url + "/scores", json={}, headers={"Content-Type": api.SCORE_MEDIA_TYPE}, timeout=10)

    assert stale.status_code == 409
    assert missing.status_code == 400 and missing.json() == {"error": "activityProgress is required"}
    assert naive.status_code == 400 and negative.status_code == 400
    assert teacher.status_code == 422
    assert media.status_code == 415 and not_json.status_code == 400
    assert no_token.status_code == 401 and no_token.headers["WWW-Authenticate"] == "Bearer"
    assert api.grades(line_item=sandbox.line_item)[student.sub].result == pytest.approx(80.0)
    assert [e.status for e in api.request_log(kind="scores")][-9:] == [200, 409, 400, 400, 400, 422, 415, 400, 401]


def test_moodle_409_in_the_same_second_and_its_type_id(make_sandbox, fast_url):
    seeded = make_sandbox(api.Profile.MOODLE)
    service = ServiceClient(seeded)
    url = fast_url(seeded.line_item_url)
    student = seeded.students[0]

    first = service.post_score(student, line_item_url=url, scoreGiven=5, timestamp="2031-03-01T10:00:00.100000+00:00")
    same = service.post_score(student, line_item_url=url, scoreGiven=6, timestamp="2031-03-01T10:00:00.900000+00:00")
    later = service.post_score(student, line_item_url=url, scoreGiven=7, timestamp="2031-03-01T10:00:01.000000+00:00")
    no_type_id = service.post_score(student, line_item_url=url.split("?")[0], timestamp="2031-03-01T10:00:02+00:00")
    teacher = service.post_score(seeded.instructor, line_item_url=url)

    assert first.status_code == 200
    assert same.status_code == 409 and same.reason.startswith("Refusing score with an earlier timestamp for item ")
    assert same.headers["Content-Type"] == "text/plain"
    assert later.status_code == 200
    assert no_type_id.status_code == 400 and no_type_id.reason == "Incorrect type_id"
    assert teacher.status_code == 400 and teacher.reason == "Incorrect score received"
    assert api.grades(line_item=seeded.line_item)[student.sub].result == pytest.approx(70.0)


def test_canvas_stale_timestamp_and_allowed_attempts(make_sandbox, fast_url):
    seeded = make_sandbox(api.Profile.CANVAS)
    seeded.line_item.allowed_attempts = 2
    seeded.line_item.save()
    service = ServiceClient(seeded)
    url = fast_url(seeded.line_item_url)
    student = seeded.students[0]
    stamp = "2031-03-01T10:00:00.500000+00:00"

    first = service.post_score(student, line_item_url=url, timestamp=stamp)
    equal = service.post_score(student, line_item_url=url, scoreGiven=9, timestamp=stamp)
    earlier = service.post_score(student, line_item_url=url, timestamp="2031-03-01T09:59:59.000000+00:00")
    third = service.post_score(student, line_item_url=url, timestamp="2031-03-01T10:00:02+00:00")
    regrade = service.post_score(student, line_item_url=url, scoreGiven=10, timestamp="2031-03-01T10:00:03+00:00",
                                 **{"https://canvas.instructure.com/lti/submission": {"new_submission": False}})

    assert [first.status_code, equal.status_code] == [200, 200]
    assert earlier.status_code == 400 and earlier.json()["errors"][0]["message"] == (
        "Provided timestamp of 2031-03-01T09:59:59.000000+00:00 before last updated timestamp of 2031-03-01T10:00:00.500Z"
    )
    assert third.status_code == 422 and third.json() == ATTEMPTS_BODY
    assert regrade.status_code == 200
    cell = api.grades(line_item=seeded.line_item)[student.sub]
    assert cell.result == pytest.approx(100.0) and cell.submission_count == 2


def test_canvas_throttle_with_rate_limit_headers(make_sandbox, fast_url):
    seeded = make_sandbox(api.Profile.CANVAS)
    api.configure_registration(registration=seeded.registration, rate_limit_capacity=3, rate_limit_leak_per_second=0)
    service = ServiceClient(seeded)
    service.token  # the token endpoint counts too (one bucket per process)
    url = fast_url(seeded.line_item_url)

    answers = [service.post_score(seeded.students[0], line_item_url=url, timestamp=now_iso(n)) for n in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 403]
    assert answers[1].headers["X-Rate-Limit-Remaining"] == "0.0" and answers[1].headers["X-Request-Cost"] == "1.0"
    assert answers[2].text == "403 Forbidden (Rate Limit Exceeded)"


def test_faults(sandbox, fast_url):
    service = ServiceClient(sandbox)
    service.token
    url = fast_url(sandbox.line_item_url)

    api.set_faults(registration=sandbox.registration, error_rate=1.0, error_status=502)
    error = service.post_score(sandbox.students[0], line_item_url=url)
    api.set_faults(registration=sandbox.registration, throttle_rate=1.0, retry_after=7)
    throttled = service.post_score(sandbox.students[0], line_item_url=url)
    api.set_faults(registration=sandbox.registration, drop_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        service.post_score(sandbox.students[0], line_item_url=url)

    assert error.status_code == 502 and throttled.status_code == 429 and throttled.headers["Retry-After"] == "7"
    assert api.grades(line_item=sandbox.line_item) == {}
    entries = api.request_log(registration=sandbox.registration, kind="scores")
    assert [e.status for e in entries] == [502, 429, None]
    assert entries[-1].note == "connection dropped (fault)"


def test_other_requests_go_to_django(sandbox, fast_url):
    service = ServiceClient(sandbox)
    url = fast_url(sandbox.line_item_url)

    line_item = service.call("GET", url, headers={"Accept": "application/vnd.ims.lis.v2.lineitem+json"})
    get_scores = service.call("GET", url + "/scores")

    assert line_item.status_code == 200 and line_item.json()["scoreMaximum"] == sandbox.line_item.score_maximum
    assert get_scores.status_code == 405


def test_the_most_score_posts_in_flight_at_once_are_counted_per_registration(sandbox, fast_url):
    # A slow LMS: three posts sent together are all in flight at once.
    fast.IN_FLIGHT.most.clear()  # the tally is the process's; registration ids may repeat across tests
    api.set_faults(registration=sandbox.registration, latency_ms=300)
    api.forget_caches()
    service = ServiceClient(sandbox)
    service.token  # noqa: B018 — fetched once, before the posts race for it
    students = sandbox.students[:3]
    answers = []
    threads = [threading.Thread(target=lambda s=s: answers.append(
        service.post_score(s, line_item_url=fast_url(sandbox.line_item_url)).status_code)) for s in students]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200, 200, 200]
    tally = requests.get(fast_url(sandbox.line_item_url).split("/sandbox-lms/")[0] + fast.IN_FLIGHT_PATH, timeout=5).json()
    assert tally["most_in_flight"][str(sandbox.registration.pk)] == 3
    # One more post alone does not lower the most seen.
    assert service.post_score(students[0], line_item_url=fast_url(sandbox.line_item_url)).status_code == 200
    assert fast.IN_FLIGHT.most[sandbox.registration.pk] == 3
