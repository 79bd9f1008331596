"""Roles that explain themselves (#14 item 7): each role is offered only what it can finish, the admin is
branded and says who is signed in as what, "View site" opens a public landing page, the 403 page stays in
the admin's layout, and counts read as people write them ("1 deployment", "3 deployments")."""
from __future__ import annotations

import datetime
from html.parser import HTMLParser
from urllib.parse import urljoin, urlparse

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import RequestFactory
from django.urls import reverse
from lti_tool.models import Key, LtiDeployment

from courseware.models import Activity, ActivityLink
from institutions.dynamic_registration.invitations import create_invitation
from institutions.models import AuditEntry, DeploymentOwnership, RegistrationInvitation
from institutions.roles import INTEGRATION, READ_ONLY, SUPPORT
from staff.views import locked_out
from tests.courseware_factories import ActivityLinkFactory
from tests.factories import CourseFactory, DeploymentFactory, OwnedDeploymentFactory, RegistrationFactory

pytestmark = pytest.mark.django_db

ROLES = [READ_ONLY, SUPPORT, INTEGRATION]


class Page(HTMLParser):
    """What a page offers: its links, the admin actions in its action menu, its rows' checkboxes, its POST forms."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.actions: list[str] = []
        self.rows: list[str] = []
        self.post_forms: list[dict] = []
        self._select: str | None = None
        self._form: dict | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attr = dict(attrs)
        if tag == "a" and attr.get("href"):
            self.links.append(attr["href"])
        elif tag == "form" and attr.get("method", "get").lower() == "post":
            self._form = {"action": attr.get("action") or "", "data": {}}
            self.post_forms.append(self._form)
        elif tag == "select":
            self._select = attr.get("name")
        elif tag == "option" and self._select == "action" and attr.get("value"):
            self.actions.append(attr["value"])
        elif tag == "input" and attr.get("name") == "_selected_action":
            self.rows.append(attr["value"])
        elif tag == "input" and self._form is not None and attr.get("type") == "hidden" and attr.get("name"):
            self._form["data"][attr["name"]] = attr.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None


@pytest.fixture
def world(two_institutions):
    """Two institutions on one Canvas (a deployment and a course each), a pending deployment, a signing key,
    a Dynamic Registration link, the catalog and one placed activity."""
    north, south = two_institutions
    canvas = RegistrationFactory(name="State Canvas")
    courses = []
    for institution in (north, south):
        deployment = OwnedDeploymentFactory(institution=institution, deployment__registration=canvas).deployment
        courses.append(CourseFactory(institution=institution, deployment=deployment))
    pending = DeploymentFactory(registration=canvas, deployment_id="pending-1", is_active=False)
    Key.objects.generate()
    create_invitation(institution=north, actor=None, base_url="http://testserver/")
    ActivityLinkFactory(course=courses[0])
    return {"north": north, "south": south, "canvas": canvas, "pending": pending, "courses": courses}


def owned_pages(world) -> list[str]:
    """Every kind of page in the admins S3 looks after: index, registrations, deployments, keys, links, audit, courseware."""
    canvas, pending = world["canvas"], world["pending"]
    active = LtiDeployment.objects.exclude(pk=pending.pk).first()
    return [
        reverse("admin:index"),
        reverse("admin:lti_tool_ltiregistration_changelist"),
        reverse("admin:lti_tool_ltiregistration_change", args=[canvas.pk]),
        reverse("admin:lti_tool_ltiregistration_tool_configuration", args=[canvas.pk]),
        reverse("admin:lti_tool_ltideployment_changelist"),
        reverse("admin:lti_tool_ltideployment_change", args=[pending.pk]),
        reverse("admin:lti_tool_ltideployment_change", args=[active.pk]),
        reverse("admin:lti_tool_key_changelist"),
        reverse("admin:lti_tool_key_change", args=[Key.objects.first().pk]),
        reverse("admin:institutions_registrationinvitation_changelist"),
        reverse("admin:institutions_registrationinvitation_change", args=[RegistrationInvitation.objects.get().pk]),
        reverse("admin:institutions_auditentry_changelist"),
        reverse("admin:institutions_auditentry_change", args=[AuditEntry.objects.first().pk]),
        reverse("admin:institutions_contextcopynotice_changelist"),
        reverse("admin:courseware_activity_changelist"),
        reverse("admin:courseware_activity_change", args=[Activity.objects.first().pk]),
        reverse("admin:courseware_activitylink_changelist"),
        reverse("admin:courseware_activitylink_change", args=[ActivityLink.objects.get().pk]),
        reverse("admin:courseware_placement_changelist"),
        reverse("admin:courseware_launch_changelist"),
        reverse("admin:courseware_attempt_changelist"),
        reverse("admin:courseware_attemptallowance_changelist"),
    ]


def local_path(base: str, href: str) -> str | None:
    """The path (and query) of a link to this site, or None for another site, a fragment or a script."""
    target = urlparse(urljoin("http://testserver" + base, href))
    if target.netloc != "testserver" or href.startswith("#") or target.scheme not in ("http", "https"):
        return None
    return target.path + (f"?{target.query}" if target.query else "")


@pytest.mark.parametrize("role", ROLES)
def test_nothing_offered_on_these_pages_ends_in_a_403(world, client_for, role):
    """Every link, every admin action and every form on the pages each role opens: none refuses that role."""
    client = client_for(role)
    refused, checked = [], set()
    for url in owned_pages(world):
        response = client.get(url)
        assert response.status_code == 200, (role, url, response.status_code)
        page = Page(response.content.decode())
        for href in page.links:
            path = local_path(url, href)
            if path is None or path in checked:
                continue
            checked.add(path)
            if client.get(path).status_code == 403:
                refused.append(f"link {path} on {url}")
        for action in page.actions:
            posted = client.post(url, {"action": action, "_selected_action": page.rows[:1], "index": 0})
            if posted.status_code == 403:
                refused.append(f"action {action} on {url}")
        for form in page.post_forms:
            target = local_path(url, form["action"]) if form["action"] else None
            if target is None or "logout" in target:
                continue  # the page's own form (Django shows its buttons by permission), or signing out
            if client.post(target, form["data"]).status_code == 403:
                refused.append(f"form to {target} on {url}")
    assert refused == [], f"{role} is offered what it cannot finish: {refused}"
    assert len(checked) > 40  # the walk did reach the pages' links


def offers(client, url: str) -> tuple[str, Page]:
    response = client.get(url)
    assert response.status_code == 200, url
    return response.content.decode(), Page(response.content.decode())


@pytest.mark.parametrize("role", [READ_ONLY, SUPPORT])
def test_read_only_and_support_see_no_onboarding_buttons(world, client_for, role):
    client = client_for(role)
    keys_html, keys = offers(client, reverse("admin:lti_tool_key_changelist"))
    assert "publish_new_key" not in keys.actions and "Rotate" not in keys_html
    pending_html, _ = offers(client, reverse("admin:lti_tool_ltideployment_change", args=[world["pending"].pk]))
    assert "and activate" not in pending_html and "assign-and-activate" not in pending_html
    _, deployments = offers(client, reverse("admin:lti_tool_ltideployment_changelist"))
    assert deployments.actions == []
    for changelist in ["lti_tool_ltiregistration", "lti_tool_ltideployment", "institutions_registrationinvitation",
                       "courseware_activity"]:
        html, page = offers(client, reverse(f"admin:{changelist}_changelist"))
        assert 'class="addlink"' not in html, changelist
        assert not [a for a in page.actions if a == "delete_selected"], changelist
    configuration, page = offers(client, reverse("admin:lti_tool_ltiregistration_tool_configuration", args=[world["canvas"].pk]))
    assert reverse("admin:institutions_registrationinvitation_add") not in page.links
    assert "Edit the registration" not in configuration
    assert "staff with the Integration role make these links" in configuration
    index_html, _ = offers(client, reverse("admin:index"))
    assert 'class="addlink"' not in index_html


def test_integration_is_offered_what_onboarding_needs(world, client_for):
    client = client_for(INTEGRATION)
    _, keys = offers(client, reverse("admin:lti_tool_key_changelist"))
    assert "publish_new_key" in keys.actions
    pending_html, _ = offers(client, reverse("admin:lti_tool_ltideployment_change", args=[world["pending"].pk]))
    assert f"Assign to {world['north']} and activate" not in pending_html  # two owners of the registration: no guess
    assert "Assign to this institution and activate" in pending_html
    _, deployments = offers(client, reverse("admin:lti_tool_ltideployment_changelist"))
    assert "assign_to_institution" in deployments.actions
    for changelist in ["lti_tool_ltiregistration", "lti_tool_ltideployment", "institutions_registrationinvitation"]:
        html, _ = offers(client, reverse(f"admin:{changelist}_changelist"))
        assert 'class="addlink"' in html, changelist
    _, configuration = offers(client, reverse("admin:lti_tool_ltiregistration_tool_configuration", args=[world["canvas"].pk]))
    assert reverse("admin:institutions_registrationinvitation_add") in configuration.links


def test_delete_is_offered_only_where_it_can_finish_and_its_absence_is_explained(world, client_for):
    """Courses protect their deployment (and its registration): Delete there could only end on "Cannot delete"."""
    client = client_for(INTEGRATION)
    canvas, pending, course = world["canvas"], world["pending"], world["courses"][0]
    registration_html, _ = offers(client, reverse("admin:lti_tool_ltiregistration_change", args=[canvas.pk]))
    assert reverse("admin:lti_tool_ltiregistration_delete", args=[canvas.pk]) not in registration_html
    assert "Not deletable: 2 courses were launched through it" in registration_html
    used_html, _ = offers(client, reverse("admin:lti_tool_ltideployment_change", args=[course.deployment.pk]))
    assert reverse("admin:lti_tool_ltideployment_delete", args=[course.deployment.pk]) not in used_html
    assert "Not deletable: 1 course was launched through it" in used_html
    refused = client.post(reverse("admin:lti_tool_ltideployment_delete", args=[course.deployment.pk]), {"post": "yes"})
    assert refused.status_code == 403 and LtiDeployment.objects.filter(pk=course.deployment.pk).exists()
    assert "Your role may do this, but not to this item: its page says why." in refused.content.decode()
    pending_html, _ = offers(client, reverse("admin:lti_tool_ltideployment_change", args=[pending.pk]))
    assert reverse("admin:lti_tool_ltideployment_delete", args=[pending.pk]) in pending_html
    assert "Not deletable" not in pending_html
    read_only_html, _ = offers(client_for(READ_ONLY), reverse("admin:lti_tool_ltiregistration_change", args=[canvas.pk]))
    assert "Not deletable" not in read_only_html  # it may delete nothing anyway: no note to puzzle over


def test_support_is_offered_the_support_desk_not_onboarding(world, client_for):
    html, _ = offers(client_for(SUPPORT), reverse("admin:index"))
    assert "Why didn't this grade sync?" in html and "Grade sync: health" in html
    assert reverse("admin:lti_tool_ltiregistration_add") not in html


# --- Branding, the header, "View site" and the landing page ------------------------------------


def test_the_admin_is_branded_and_names_the_signed_in_role(world, client_for, settings):
    settings.TOOL_TITLE = "Acme Grade Sync"
    html, page = offers(client_for(READ_ONLY), reverse("admin:index"))
    assert '<div id="site-name"><a href="/admin/">Acme Grade Sync</a></div>' in html
    assert "<title>Support and onboarding | Acme Grade Sync</title>" in html
    assert "Django administration" not in html and "Django site admin" not in html
    assert '<span id="staff-role">(role: Read-only)</span>' in html
    assert "/" in page.links  # View site


def test_view_site_opens_the_landing_page(client_for, settings):
    client = client_for(SUPPORT)
    html, page = offers(client, reverse("admin:lti_tool_key_changelist"))
    assert '<a href="/">View site</a>' in html
    landing = client.get("/")
    assert landing.status_code == 200 and settings.TOOL_TITLE in landing.content.decode()


def test_the_landing_page_says_what_this_is_and_where_to_go(client, settings, db):
    settings.SANDBOX_LMS = True
    response = client.get("/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "LTI&nbsp;1.3" in html and "gradebook" in html and "Courseware" in html
    page = Page(html)
    assert reverse("admin:index") in page.links
    assert "http://testserver/lti/jwks/" in page.links
    assert reverse("sandbox_lms:home") in page.links
    # The JWKS it names is the tool's public keyset, and answers.
    jwks = client.get("/lti/jwks/")
    assert jwks.status_code == 200 and jwks.json()["keys"]


def test_the_landing_page_links_no_sandbox_when_it_is_off(client, settings, db):
    settings.SANDBOX_LMS = False
    html = client.get("/").content.decode()
    assert reverse("sandbox_lms:home") not in html and "Sandbox LMS" not in html


def test_the_landing_page_answers_get_only_and_shows_no_secret(client, world):
    assert client.post("/").status_code == 405
    assert client.put("/").status_code == 405
    html = client.get("/").content.decode()
    assert "PRIVATE KEY" not in html and world["canvas"].client_id not in html
    assert RegistrationInvitation.objects.count() == 1  # nothing written


def test_the_403_page_is_inside_the_admin_layout_and_names_the_role(world, client_for, settings):
    settings.TOOL_TITLE = "Acme Grade Sync"
    response = client_for(READ_ONLY).get(reverse("admin:lti_tool_ltiregistration_add"))
    html = response.content.decode()
    assert response.status_code == 403
    assert "This needs the Integration role. You are signed in as readonly-staff (Read-only)." in html
    assert 'id="nav-sidebar"' in html and 'id="user-tools"' in html and "Acme Grade Sync" in html
    assert reverse("admin:lti_tool_ltiregistration_changelist") in html  # the sidebar lets them carry on


# --- Plurals -----------------------------------------------------------------------------------


def test_assigned_deployments_are_counted_in_words(world, client_for):
    client = client_for(INTEGRATION)
    canvas, north = world["canvas"], world["north"]
    more = [DeploymentFactory(registration=canvas, deployment_id=f"pending-{n}", is_active=False) for n in (2, 3)]
    url = reverse("admin:lti_tool_ltideployment_changelist")
    confirm = {"action": "assign_to_institution", "confirm": "1", "institution": north.pk, "activate": "on"}
    one = client.post(url, {**confirm, "_selected_action": [world["pending"].pk]}, follow=True)
    assert "1 deployment assigned to North College and activated." in one.content.decode()
    two = client.post(url, {**confirm, "_selected_action": [d.pk for d in more]}, follow=True)
    assert "2 deployments assigned to North College and activated." in two.content.decode()
    assert DeploymentOwnership.objects.filter(institution=north).count() == 4


@pytest.mark.parametrize(("limit", "minutes", "words"), [
    (1, 1, ["after 1 failed attempt (a password or a code).", "Try again in 1 minute,"]),
    (3, 30, ["after 3 failed attempts (passwords or codes).", "Try again in 30 minutes,"]),
])
def test_the_lockout_page_counts_in_words(settings, db, limit, minutes, words):
    settings.AXES_FAILURE_LIMIT = limit
    settings.AXES_COOLOFF_TIME = datetime.timedelta(minutes=minutes)
    request = RequestFactory().get(reverse("admin:login"))
    request.user = AnonymousUser()
    html = locked_out(request).content.decode()
    for text in words:
        assert text in html


@pytest.mark.parametrize(("failures", "words"), [(1, "Wait 1 second, then"), (4, "Wait 8 seconds, then")])
def test_the_code_step_counts_the_wait_in_words(client, staff_user, failures, words):
    from django.utils import timezone
    from django_otp.plugins.otp_totp.models import TOTPDevice

    user = staff_user(SUPPORT)
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    client.post(reverse("admin:login"), {"username": user.username, "password": "pw"})
    # The device backs off 1 s, 2 s, 4 s, 8 s … after wrong codes in a row.
    TOTPDevice.objects.filter(pk=device.pk).update(throttling_failure_count=failures,
                                                   throttling_failure_timestamp=timezone.now())
    page = client.post(reverse("admin:second_factor"), {"code": "123456"}).content.decode()
    assert f"Too many wrong codes in a row. {words} enter the current code." in page
