"""Token endpoint and AGS line items, scores and results, over HTTP."""
from __future__ import annotations

import time

import pytest
import requests

from sandbox_lms import api, protocol

from .conftest import ServiceClient, now_iso

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_token_is_granted_for_the_requested_scopes_and_counted(sandbox):
    client = ServiceClient(sandbox)
    api.configure_registration(registration=sandbox.registration, token_lifetime=120)

    response = client.request_token([protocol.SCOPE_SCORE, "https://example.com/unknown-scope"])

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", 120, protocol.SCOPE_SCORE)
    sandbox.registration.refresh_from_db()
    assert sandbox.registration.tokens_issued == 1


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"aud": "https://elsewhere.example/token"}, "Audience"),
        ({"sub": "someone-else"}, "iss and sub must both be the client_id"),
        ({"exp": int(time.time()) - 60}, "expired"),
        ({"jti": None}, "jti"),
    ],
)
def test_a_bad_client_assertion_is_refused(sandbox, overrides, error):
    client = ServiceClient(sandbox)

    response = client.request_token(assertion=client.assertion(**overrides))

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert error in response.json()["error_description"]


def test_a_reused_jti_and_an_unknown_client_are_refused(sandbox):
    client = ServiceClient(sandbox)
    assertion = client.assertion(jti="once")

    first = client.request_token(assertion=assertion)
    second = client.request_token(assertion=assertion)
    stranger = client.request_token(assertion=client.assertion(iss="nobody", sub="nobody"))

    assert first.status_code == 200
    assert second.status_code == 400 and second.json()["error_description"] == "jti was already used"
    assert stranger.status_code == 401 and stranger.json()["error"] == "invalid_client"


def test_an_expired_or_unknown_access_token_is_refused(sandbox):
    client = ServiceClient(sandbox)
    api.configure_registration(registration=sandbox.registration, token_lifetime=1)
    token = client.token
    time.sleep(1.1)

    expired = client.post_score(sandbox.students[0])
    unknown = requests.get(sandbox.platform.url(f"api/courses/{sandbox.course.pk}/lineitems"),
                           headers={"Authorization": "Bearer nope"}, timeout=5)

    assert token and expired.status_code == 401 and "expired" in expired.text
    assert unknown.status_code == 401


def test_a_score_lands_in_the_gradebook_rescaled_with_its_timestamp(sandbox, client):
    service = ServiceClient(sandbox)
    student = sandbox.students[0]
    stamp = now_iso()

    response = service.post_score(student, scoreGiven=17, scoreMaximum=20, timestamp=stamp)

    assert response.status_code == 200, response.text
    cell = api.grades(line_item=sandbox.line_item)[student.sub]
    assert cell.result == pytest.approx(85.0)  # 17/20 on a 100-point line item
    assert cell.timestamp.isoformat() == stamp.replace("+00:00", "+00:00")
    client.post(f"/sandbox-lms/act-as/", {"user": sandbox.instructor.pk})
    page = client.get(f"/sandbox-lms/courses/{sandbox.course.pk}/gradebook/").content.decode()
    assert "85.00" in page and student.name in page and "Not for production" in page


def test_pylti1p3_put_grade_lands_in_the_gradebook(sandbox):
    student = sandbox.students[1]
    initiation = api.start_launch(user=student, resource_link=sandbox.resource_link)

    answer = api.follow_launch(requests.Session(), initiation, extra_fields={"grade": "42", "timestamp": now_iso()})

    assert answer.status_code == 200, answer.text
    assert api.grades(line_item=sandbox.line_item)[student.sub].result == pytest.approx(42.0)
    assert api.request_log(registration=sandbox.registration, kind="scores")[-1].status == 200


def test_scores_are_validated_as_the_spec_says(sandbox):
    service = ServiceClient(sandbox)
    student = sandbox.students[0]
    url = sandbox.line_item_url + "/scores"

    wrong_type = service.call("POST", url, data=b"{}", headers={"Content-Type": "application/json"})
    no_timezone = service.post_score(student, timestamp="2030-01-01T10:00:00")
    no_maximum = service.post_score(student, scoreMaximum=None)
    instructor = service.post_score(sandbox.instructor)
    stranger = service.post_score(api.create_user(platform=sandbox.platform, name="Not Enrolled"))

    assert wrong_type.status_code == 415
    assert no_timezone.status_code == 400 and "timezone" in no_timezone.text
    assert no_maximum.status_code == 400 and "scoreMaximum" in no_maximum.text
    assert instructor.status_code == 422 and stranger.status_code == 422
    assert api.grades(line_item=sandbox.line_item) == {}


def test_timestamps_must_increase_and_anything_but_fully_graded_clears_the_grade(sandbox):
    service = ServiceClient(sandbox)
    student = sandbox.students[0]
    first = now_iso()

    assert service.post_score(student, scoreGiven=9, timestamp=first).status_code == 200
    same = service.post_score(student, scoreGiven=3, timestamp=first)
    older = service.post_score(student, scoreGiven=3, timestamp=now_iso(-60))
    progress = service.post_score(student, scoreGiven=None, gradingProgress="Pending", timestamp=now_iso(1))

    assert same.status_code == 409 and older.status_code == 409
    assert progress.status_code == 200
    cell = api.grades(line_item=sandbox.line_item)[student.sub]
    assert cell.result is None and cell.grading_progress == "Pending"


def test_line_items_container_filters_paginates_and_creates(sandbox):
    service = ServiceClient(sandbox)
    container = sandbox.platform.url(f"api/courses/{sandbox.course.pk}/lineitems")
    for n in range(3):
        created = service.call("POST", container, json={"label": f"Extra {n}", "scoreMaximum": 10, "tag": "extra",
                                                          "resourceId": f"extra-{n}"},
                               headers={"Content-Type": "application/vnd.ims.lis.v2.lineitem+json"})
        assert created.status_code == 201, created.text
    blank = service.call("POST", container, json={"label": " ", "scoreMaximum": 10})
    zero = service.call("POST", container, json={"label": "Zero", "scoreMaximum": 0})
    bad_link = service.call("POST", container, json={"label": "X", "scoreMaximum": 1, "resourceLinkId": "nope"})

    by_link = service.call("GET", container, params={"resource_link_id": sandbox.resource_link.resource_link_id}).json()
    by_resource = service.call("GET", container, params={"resource_id": "extra-1"}).json()
    pages, url = [], container + "?tag=extra&limit=2"
    while url:
        page = service.call("GET", url)
        pages.append([item["label"] for item in page.json()])
        url = page.links.get("next", {}).get("url")

    assert (blank.status_code, zero.status_code, bad_link.status_code) == (400, 400, 404)
    assert [item["id"] for item in by_link] == [sandbox.line_item_url]
    assert [item["resourceId"] for item in by_resource] == ["extra-1"]
    assert pages == [["Extra 0", "Extra 1"], ["Extra 2"]]


def test_line_item_get_put_delete_and_results(sandbox):
    service = ServiceClient(sandbox)
    student = sandbox.students[0]
    service.post_score(student, scoreGiven=5, scoreMaximum=10)

    item = service.call("GET", sandbox.line_item_url).json()
    item.update({"scoreMaximum": 20, "label": "Renamed"})
    put = service.call("PUT", sandbox.line_item_url, json=item)
    results = service.call("GET", sandbox.line_item_url + "/results").json()
    deleted = service.call("DELETE", sandbox.line_item_url)
    gone = service.call("GET", sandbox.line_item_url)

    assert put.status_code == 200 and put.json()["label"] == "Renamed"
    assert results == [{
        "id": results[0]["id"], "scoreOf": sandbox.line_item_url, "userId": student.sub,
        "resultScore": 10.0, "resultMaximum": 20.0,
    }]
    assert deleted.status_code == 204 and gone.status_code == 404


def test_a_token_without_the_score_scope_cannot_post_scores(sandbox):
    service = ServiceClient(sandbox)
    service._token = service.request_token([protocol.SCOPE_LINEITEM_READONLY]).json()["access_token"]

    response = service.post_score(sandbox.students[0])

    assert response.status_code == 403 and "insufficient_scope" in response.text


def test_memberships_list_the_course_roster(sandbox):
    service = ServiceClient(sandbox)

    roster = service.call("GET", sandbox.platform.url(f"api/courses/{sandbox.course.pk}/memberships")).json()

    assert {m["user_id"] for m in roster["members"]} == {sandbox.instructor.sub, *(s.sub for s in sandbox.students)}
