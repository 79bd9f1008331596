"""Course copy keeps syncing (issue #13 item 9), over real HTTP with the sandbox LMS.

A course copied in the LMS gets new context and resource link ids and copies of its line items. The
tool links the copy to its source (the launch's Context.id.history, or the LMS's context copy notice
through PNS), binds the copy's links to the copy's own line items (the launch's lineitem claim, else
by resourceId, then our tag), never creates a line item and never grades the source's.
"""
from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from courseware.models import ActivityLink
from gradesync.models import Delivery
from institutions.models import ContextCopyNotice, CopiedVia, Course
from institutions.services import find_source_course, history_ids
from institutions.tool_configuration import custom_parameters
from sandbox_lms import api, notices
from sandbox_lms.models import SandboxLineItem
from sandbox_lms.platform import sign
from tests import lms
from tests.courseware.test_launch_flow import catalog, link_for, take_quiz  # noqa: F401 — catalog is a fixture
from tests.factories import CourseFactory, DeploymentFactory, OwnedDeploymentFactory

pytestmark = pytest.mark.django_db(transaction=True)

COPY_NOTICE = "LtiContextCopyNotice"


@pytest.fixture
def connected(live_server, two_institutions):
    return lms.connect(live_server.url, two_institutions[0], profile="canvas")


def place(connected, picks):
    done = lms.deep_link(lms.browser(), connected, picks)
    assert done.status_code == 200, done.text[:1000]


def copy_link_for(copy, activity):
    return next(link for link in copy.resource_links.all() if link.custom.get("activity_id") == str(activity.pk))


def finish_quiz(connected, course_link, student, answers=(1, 2, 0, 0)):
    http = lms.browser()
    page = take_quiz(http, lms.launch(http, user=student, resource_link=course_link), list(answers))
    assert page.status_code == 200, page.text[:500]


def tool_course(sandbox_course) -> Course:
    return Course.objects.select_related("copied_from").get(context__id_on_platform=sandbox_course.context_id)


def test_a_copied_course_grades_its_own_copied_line_item_and_knows_its_source(connected, catalog):
    _, quiz, reading = catalog
    place(connected, {quiz.pk: {"graded": True, "points": 25}, reading.pk: {"graded": True, "points": 5}})
    student = connected.students[0]
    finish_quiz(connected, link_for(connected, quiz), student, (1, 2, 0, 3))  # 4 of 4 in the source
    source_item = connected.course.line_items.get(label=quiz.title)
    assert api.grades(line_item=source_item)[student.sub].result == pytest.approx(25)

    copy = api.copy_course(course=connected.course, title="Networking Fundamentals (Spring)")
    items_before = SandboxLineItem.objects.count()
    instructor_page = lms.launch(lms.browser(), user=connected.instructor, resource_link=copy_link_for(copy, quiz))
    assert instructor_page.status_code == 200, instructor_page.text[:500]
    finish_quiz(connected, copy_link_for(copy, quiz), student, (1, 2, 0, 0))  # 3 of 4 in the copy

    copied_item = copy.line_items.get(label=quiz.title)
    assert api.grades(line_item=copied_item)[student.sub].result == pytest.approx(18.75)
    assert api.grades(line_item=source_item)[student.sub].result == pytest.approx(25)  # the source is untouched
    assert SandboxLineItem.objects.count() == items_before  # no line item created anywhere
    copied, source = tool_course(copy), tool_course(connected.course)
    assert copied.copied_from == source and copied.copied_via == CopiedVia.CONTEXT_HISTORY
    assert copied.institution == source.institution
    link = ActivityLink.objects.get(resource_link__id_on_platform=copy_link_for(copy, quiz).resource_link_id)
    assert link.course == copied and link.graded and link.placement is None  # the source's placement is not the copy's
    sent = Delivery.objects.filter(course=copied).get()
    assert sent.status == "sent" and sent.line_item.url.endswith(f"/lineitems/{copied_item.pk}/lineitem")


@pytest.mark.parametrize("lost", ["resource_link", "resource_link_and_resource_id"])
def test_without_the_lineitem_claim_the_copy_binds_by_resource_id_then_tag(connected, catalog, lost):
    _, quiz, _ = catalog
    place(connected, {quiz.pk: {"graded": True, "points": 10}})
    copy = api.copy_course(course=connected.course)
    # The copy's column is not bound to the copied link (an LMS that copies line items made over the API
    # that way): the launch names no lineitem, so the tool must find the column itself.
    changes = {"resource_link": None} if lost == "resource_link" else {"resource_link": None, "resource_id": ""}
    copy.line_items.filter(label=quiz.title).update(**changes)
    items_before = SandboxLineItem.objects.count()
    student = connected.students[1]
    finish_quiz(connected, copy_link_for(copy, quiz), student, (1, 2, 0, 3))

    copied_item = copy.line_items.get(label=quiz.title)
    assert api.grades(line_item=copied_item)[student.sub].result == pytest.approx(10)
    assert student.sub not in api.grades(line_item=connected.course.line_items.get(label=quiz.title))
    assert SandboxLineItem.objects.count() == items_before
    lookups = [entry.path for entry in api.request_log(registration=connected.seeded.registration, kind="lineitems")]
    expected = "resource_id=" if lost == "resource_link" else "tag=courseware"
    assert any(expected in path for path in lookups), lookups
    assert all(f"/courses/{copy.pk}/" in path for path in lookups)  # only the copy's container was asked
    assert not any(entry.method == "POST" for entry in api.request_log(registration=connected.seeded.registration, kind="lineitems"))
    assert tool_course(copy).copied_from == tool_course(connected.course)


def test_an_ambiguous_tag_binds_nothing_and_creates_nothing(connected, catalog):
    _, quiz, reading = catalog
    place(connected, {quiz.pk: {"graded": True, "points": 10}, reading.pk: {"graded": True, "points": 5}})
    copy = api.copy_course(course=connected.course)
    copy.line_items.filter(tag="courseware").update(resource_link=None, resource_id="")  # two columns with our tag, neither names its activity
    items_before = SandboxLineItem.objects.count()
    finish_quiz(connected, copy_link_for(copy, quiz), connected.students[0])
    delivery = Delivery.objects.get(course=tool_course(copy))
    assert delivery.line_item is None and delivery.status == "retrying"
    assert "No line item" in delivery.last_message
    assert SandboxLineItem.objects.count() == items_before
    assert all(not api.grades(line_item=item) for item in copy.line_items.all())


# --- Platform Notification Service ------------------------------------------------------------


def without_history(profile="canvas"):
    return {k: v for k, v in custom_parameters(profile).items() if k != "context_id_history"}


def test_the_handler_is_registered_at_launch_and_a_copy_notice_gives_the_lineage(live_server, two_institutions, catalog):
    _, quiz, _ = catalog
    connected = lms.connect(live_server.url, two_institutions[0], profile="canvas", custom=without_history())
    place(connected, {quiz.pk: {"graded": True, "points": 10}})
    registration = connected.seeded.registration
    registration.refresh_from_db()
    assert registration.notice_handlers == {COPY_NOTICE: f"{live_server.url}/lti/notices/"}
    puts = api.request_log(registration=registration, kind="notice_handlers")
    assert [(entry.method, entry.status) for entry in puts] == [("PUT", 200)]

    copy = api.copy_course(course=connected.course)  # the LMS posts its notice before anyone launches the copy
    notice = ContextCopyNotice.objects.get()
    assert notice.context_id_on_platform == copy.context_id and notice.origin_context_ids == [connected.course.context_id]
    assert notice.course is None and notice.deployment == connected.deployment
    assert api.request_log(registration=registration, kind="copy_notice")[-1].status == 200

    student = connected.students[0]
    finish_quiz(connected, copy_link_for(copy, quiz), student, (1, 2, 0, 3))
    copied = tool_course(copy)
    assert copied.copied_from == tool_course(connected.course) and copied.copied_via == CopiedVia.COPY_NOTICE
    notice.refresh_from_db()
    assert notice.course == copied
    assert api.grades(line_item=copy.line_items.get(label=quiz.title))[student.sub].result == pytest.approx(10)
    # Launches go on without registering again (once a day at most).
    lms.launch(lms.browser(), user=student, resource_link=copy_link_for(copy, quiz))
    assert len(api.request_log(registration=registration, kind="notice_handlers")) == 1

    # A notice about a course we know already (content imported into it) is linked at once, kept once.
    assert notices.send_context_copy_notice(copy=copy, source=connected.course) == 200
    assert ContextCopyNotice.objects.filter(course=copied).count() == 2


def test_a_platform_without_pns_is_not_asked(live_server, two_institutions, catalog):
    _, quiz, _ = catalog
    connected = lms.connect(live_server.url, two_institutions[0], profile="moodle")
    place(connected, {quiz.pk: {"graded": True, "points": 10}})
    assert not api.request_log(registration=connected.seeded.registration, kind="notice_handlers")
    api.copy_course(course=connected.course)
    assert not ContextCopyNotice.objects.exists()


# --- Refused notices: a 4xx with a reason, nothing written ------------------------------------


@pytest.fixture
def copied(connected, catalog):
    """A copy of a course the tool knows, its copy launched once (no lineage from a notice yet)."""
    _, quiz, _ = catalog
    place(connected, {quiz.pk: {"graded": True, "points": 10}})
    copy = api.copy_course(course=connected.course)
    ContextCopyNotice.objects.all().delete()
    return copy


def post_notices(connected, body, **kwargs):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{connected.base_url}/lti/notices/", data=data, headers={"Content-Type": "application/json"},
                         timeout=10, **kwargs)


def signed_notice(connected, copy, **changes):
    claims = notices.context_copy_notice_claims(copy=copy, source=connected.course)
    for name, value in changes.items():
        key = name if name in ("iss", "aud", "exp", "iat", "azp") else f"https://purl.imsglobal.org/spec/lti/claim/{name}"
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return sign(connected.seeded.platform, claims)


def forged_notice(connected, copy):
    """Signed by a key that is not the LMS's, under the LMS's kid."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    kid = connected.seeded.platform.keys.first().kid
    return jwt.encode(notices.context_copy_notice_claims(copy=copy, source=connected.course), pem, algorithm="RS256",
                      headers={"kid": kid})


REFUSALS = {
    "not json": (lambda c, copy: b"{notices", 400, "not JSON"),
    "no notices": (lambda c, copy: {"notices": []}, 400, "at least one notice"),
    "jwt not a string": (lambda c, copy: {"notices": [{"jwt": 42}]}, 400, '{"jwt"'),
    "not a jwt": (lambda c, copy: {"notices": [{"jwt": "abc.def"}]}, 400, "not a valid JWT"),
    "forged": (lambda c, copy: {"notices": [{"jwt": forged_notice(c, copy)}]}, 401, "forged or altered"),
    "another tool's": (lambda c, copy: {"notices": [{"jwt": signed_notice(c, copy, aud="someone-else", azp=None)}]}, 401,
                       "not an active registration"),
    "expired": (lambda c, copy: {"notices": [{"jwt": signed_notice(c, copy, exp=int(time.time()) - 60)}]}, 401, "expired"),
    "unknown deployment": (lambda c, copy: {"notices": [{"jwt": signed_notice(c, copy, deployment_id="dep-unknown")}]},
                           403, "not an active deployment"),
    "other notice type": (lambda c, copy: {"notices": [{"jwt": signed_notice(
        c, copy, notice={"id": str(uuid.uuid4()), "timestamp": "2026-01-01T00:00:00Z", "type": "LtiHelloWorldNotice"})}]},
        400, "only LtiContextCopyNotice"),
    "no context": (lambda c, copy: {"notices": [{"jwt": signed_notice(c, copy, context=None)}]}, 400, "context id"),
    "bad origins": (lambda c, copy: {"notices": [{"jwt": signed_notice(c, copy, origin_contexts="abc")}]}, 400,
                    "origin_contexts"),
    "one bad of two": (lambda c, copy: {"notices": [{"jwt": signed_notice(c, copy)}, {"jwt": forged_notice(c, copy)}]},
                       401, "forged"),
    "too large": (lambda c, copy: {"notices": [{"jwt": "x" * (600 * 1024)}]}, 413, "larger than"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_notice_is_refused_with_a_reason_and_nothing_written(connected, copied, case):
    make, status, reason = REFUSALS[case]
    answer = post_notices(connected, make(connected, copied))
    assert answer.status_code == status, answer.text[:300]
    assert reason in answer.json()["error"]
    assert not ContextCopyNotice.objects.exists()
    assert not Course.objects.filter(copied_from__isnull=False).exists()


def test_a_notice_is_kept_once_and_get_is_not_allowed(connected, copied):
    token = signed_notice(connected, copied)
    first = post_notices(connected, {"notices": [{"jwt": token}]})
    again = post_notices(connected, {"notices": [{"jwt": token}]})
    assert (first.status_code, first.json()) == (200, {"received": 1, "new": 1})
    assert (again.status_code, again.json()) == (200, {"received": 1, "new": 0})
    assert ContextCopyNotice.objects.count() == 1
    assert requests.get(f"{connected.base_url}/lti/notices/", timeout=10).status_code == 405


def test_the_sandbox_refuses_a_handler_off_the_tools_domain_or_without_the_scope(connected, catalog):
    _, quiz, _ = catalog
    place(connected, {quiz.pk: {"graded": True, "points": 10}})
    registration = connected.seeded.registration
    url = notices.pns_url(registration)
    client = _ServiceClient(connected.seeded)
    off_domain = client.put(url, {"notice_type": COPY_NOTICE, "handler": "https://evil.example/hook"})
    assert off_domain.status_code == 400 and "tool's domain" in off_domain.text
    no_scope = client.put(url, {"notice_type": COPY_NOTICE, "handler": ""}, scopes=[api.SUPPORTED_SCOPES[0]])
    assert no_scope.status_code == 403
    registration.refresh_from_db()
    assert registration.notice_handlers == {COPY_NOTICE: f"{connected.base_url}/lti/notices/"}
    removed = client.put(url, {"notice_type": COPY_NOTICE, "handler": ""})
    assert removed.status_code == 200
    registration.refresh_from_db()
    assert registration.notice_handlers == {}


class _ServiceClient:
    """Signs the tool's client assertion with the tool's own key, as our AGS client does."""

    def __init__(self, seeded) -> None:
        self.seeded = seeded

    def put(self, url, body, scopes=None):
        from gradesync.ags import build_client_assertion
        from lti_tool.models import LtiRegistration

        registration = LtiRegistration.objects.get(client_id=self.seeded.registration.client_id)
        token = requests.post(self.seeded.token_url, data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": build_client_assertion(registration, self.seeded.deployment.deployment_id),
            "scope": " ".join(scopes or [notices.SCOPE_NOTICEHANDLERS]),
        }, timeout=10).json()["access_token"]
        return requests.put(url, data=json.dumps(body), headers={"Authorization": f"Bearer {token}"}, timeout=10)


# --- Lineage rules without an LMS -------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("", []),
    (None, []),
    ("$Context.id.history", []),
    ("abc", ["abc"]),
    ("new%2Cer,older, abc ,new%2Cer,truncated", ["new,er", "older", "abc"]),
    ("x" * 300 + ",ok", ["ok"]),
    ("a\x00b,ok", ["ok"]),
])
def test_history_ids(value, expected):
    assert history_ids(value) == expected


def test_the_source_is_never_another_institutions_course(two_institutions):
    north, south = two_institutions
    copy = CourseFactory(institution=north)
    # One Canvas (one registration) serving both institutions, each in its own sub-account (deployment).
    south_deployment = OwnedDeploymentFactory(
        institution=south, deployment=DeploymentFactory(registration=copy.deployment.registration)
    ).deployment
    theirs = CourseFactory(institution=south, deployment=south_deployment)
    ours = CourseFactory(institution=north, deployment=copy.deployment)
    history = f"{theirs.context.id_on_platform},{ours.context.id_on_platform}"
    assert find_source_course(course=copy, context_ids=history_ids(history)) == ours  # South's is skipped
    assert find_source_course(course=copy, context_ids=[theirs.context.id_on_platform]) is None
    # Same institution but another LMS registration: a context id means nothing across issuers.
    other_registration = CourseFactory(institution=north)
    assert find_source_course(course=copy, context_ids=[other_registration.context.id_on_platform]) is None


def test_the_course_page_shows_the_lineage_and_the_copies(connected, catalog, admin_client):
    _, quiz, _ = catalog
    place(connected, {quiz.pk: {"graded": True, "points": 10}})
    copy = api.copy_course(course=connected.course)
    lms.launch(lms.browser(), user=connected.instructor, resource_link=copy_link_for(copy, quiz))
    copied, source = tool_course(copy), tool_course(connected.course)
    page = admin_client.get(f"/admin/institutions/course/{copied.pk}/change/").content.decode()
    assert f"/admin/institutions/course/{source.pk}/change/" in page
    assert "found by the launch&#x27;s Context.id.history" in page or "found by the launch's Context.id.history" in page
    source_page = admin_client.get(f"/admin/institutions/course/{source.pk}/change/").content.decode()
    assert f"/admin/institutions/course/{copied.pk}/change/" in source_page
    notices_page = admin_client.get("/admin/institutions/contextcopynotice/")
    assert ContextCopyNotice.objects.get().course == copied
    assert notices_page.status_code == 200 and copy.context_id in notices_page.content.decode()
