"""The onboarding admin as staff use it: pages, permissions, audit, bad input."""
import json

import pytest
from django.urls import reverse
from lti_tool.models import Key, LtiDeployment, LtiRegistration

from institutions.models import AuditEntry, Course, DeploymentOwnership, GradePolicy, Institution
from institutions.roles import INTEGRATION, READ_ONLY, SUPPORT
from tests.factories import CourseFactory, DeploymentFactory, OwnedDeploymentFactory, RegistrationFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def tenants(two_institutions):
    """Two institutions, each with a deployment of one shared Canvas and a course."""
    north, south = two_institutions
    canvas = RegistrationFactory(name="State Canvas")
    for institution in (north, south):
        deployment = OwnedDeploymentFactory(institution=institution, deployment__registration=canvas).deployment
        CourseFactory(institution=institution, deployment=deployment)
    DeploymentFactory(registration=canvas, deployment_id="pending-1", is_active=False)
    Key.objects.generate()
    return north, south, canvas


def admin_urls(tenants):
    north, south, canvas = tenants
    course = Course.objects.first()
    deployment = LtiDeployment.objects.first()
    return [
        reverse("admin:index"),
        reverse("admin:institutions_institution_changelist"),
        reverse("admin:institutions_institution_change", args=[north.pk]),
        reverse("admin:institutions_institution_change", args=[south.pk]),
        reverse("admin:institutions_course_changelist"),
        reverse("admin:institutions_course_change", args=[course.pk]),
        reverse("admin:institutions_auditentry_changelist"),
        reverse("admin:lti_tool_ltiregistration_changelist"),
        reverse("admin:lti_tool_ltiregistration_change", args=[canvas.pk]),
        reverse("admin:lti_tool_ltiregistration_tool_configuration", args=[canvas.pk]),
        reverse("admin:lti_tool_ltideployment_changelist"),
        reverse("admin:lti_tool_ltideployment_changelist") + "?status=pending",
        reverse("admin:lti_tool_ltideployment_change", args=[deployment.pk]),
        reverse("admin:lti_tool_key_changelist"),
    ]


@pytest.mark.parametrize("role", [SUPPORT, INTEGRATION, READ_ONLY])
def test_every_page_renders_for_every_role(tenants, client_for, role):
    client = client_for(role)
    for url in admin_urls(tenants):
        response = client.get(url)
        assert response.status_code == 200, url


def test_superuser_sees_add_pages(tenants, admin_client):
    for url in [
        reverse("admin:institutions_institution_add"),
        reverse("admin:lti_tool_ltiregistration_add"),
        reverse("admin:lti_tool_ltiregistration_add") + "?preset=canvas",
    ] + admin_urls(tenants):
        assert admin_client.get(url).status_code == 200, url


def test_institution_page_lists_its_deployments_and_policy_history(tenants, client_for):
    north, south, _ = tenants
    support = client_for(SUPPORT)
    support.post(reverse("admin:institutions_institution_grade_policy", args=[north.pk]), {"grade_policy": "most_recent"})
    page = support.get(reverse("admin:institutions_institution_change", args=[north.pk])).content.decode()
    assert north.deployments.get().deployment.deployment_id in page
    assert south.deployments.get().deployment.deployment_id not in page
    assert "Highest attempt → Most recent attempt" in page
    assert "support-staff" in page


class TestGradePolicyPermissions:
    def test_support_changes_the_policy_and_it_is_audited(self, tenants, client_for):
        north = tenants[0]
        client = client_for(SUPPORT)
        url = reverse("admin:institutions_institution_grade_policy", args=[north.pk])
        assert client.get(url).status_code == 200
        response = client.post(url, {"grade_policy": GradePolicy.MOST_RECENT})
        assert response.status_code == 302
        north.refresh_from_db()
        assert north.grade_policy == GradePolicy.MOST_RECENT
        entry = AuditEntry.objects.get(action="grade_policy.changed")
        assert (entry.actor_name, entry.changes) == ("support-staff", {"grade_policy": ["Highest attempt", "Most recent attempt"]})

    @pytest.mark.parametrize("role", [INTEGRATION, READ_ONLY])
    def test_others_cannot_open_or_post_the_policy_view(self, tenants, client_for, role):
        north = tenants[0]
        client = client_for(role)
        url = reverse("admin:institutions_institution_grade_policy", args=[north.pk])
        assert client.get(url).status_code == 403
        assert client.post(url, {"grade_policy": GradePolicy.MOST_RECENT}).status_code == 403
        north.refresh_from_db()
        assert north.grade_policy == GradePolicy.HIGHEST

    def test_a_crafted_change_form_post_cannot_change_the_policy(self, tenants, client_for):
        north = tenants[0]
        client = client_for(INTEGRATION)
        url = reverse("admin:institutions_institution_change", args=[north.pk])
        page = client.get(url).content.decode()
        assert 'name="grade_policy"' not in page and "Change grade policy" not in page
        data = {
            "name": "North College (renamed)",
            "slug": "north",
            "is_active": "on",
            "grade_policy": GradePolicy.MOST_RECENT,
            "ownership-TOTAL_FORMS": "0",
            "ownership-INITIAL_FORMS": "0",
            "deployments-TOTAL_FORMS": "1",
            "deployments-INITIAL_FORMS": "1",
            "deployments-0-id": north.deployments.get().pk,
            "deployments-0-institution": north.pk,
        }
        response = client.post(url, data)
        assert response.status_code == 302, response.content.decode()[:2000]
        north.refresh_from_db()
        assert north.name == "North College (renamed)"
        assert north.grade_policy == GradePolicy.HIGHEST
        entry = AuditEntry.objects.get(action="institution.changed")
        assert entry.changes == {"name": ["North College", "North College (renamed)"]}

    def test_support_sees_the_change_button_and_read_only_does_not(self, tenants, client_for):
        north = tenants[0]
        url = reverse("admin:institutions_institution_change", args=[north.pk])
        assert "Change grade policy" in client_for(SUPPORT).get(url).content.decode()
        assert "Change grade policy" not in client_for(READ_ONLY).get(url).content.decode()


@pytest.mark.parametrize("role", [READ_ONLY, SUPPORT])
def test_roles_without_onboarding_rights_cannot_edit_registrations(tenants, client_for, role):
    canvas = tenants[2]
    client = client_for(role)
    response = client.post(
        reverse("admin:lti_tool_ltiregistration_change", args=[canvas.pk]), {"name": "hacked"}
    )
    assert response.status_code == 403
    canvas.refresh_from_db()
    assert canvas.name == "State Canvas"


def registration_post_data(**overrides):
    data = {
        "name": "Moodle of North",
        "issuer": "https://moodle.north.edu",
        "client_id": "abc123",
        "audience": "",
        "auth_url": "https://moodle.north.edu/mod/lti/auth.php",
        "token_url": "https://moodle.north.edu/mod/lti/token.php",
        "keyset_url": "https://moodle.north.edu/mod/lti/certs.php",
        "is_active": "on",
        "public_key": "",
        "private_key": "",
        "profile-TOTAL_FORMS": "1",
        "profile-INITIAL_FORMS": "0",
        "profile-MIN_NUM_FORMS": "1",
        "profile-MAX_NUM_FORMS": "1",
        "profile-0-lms_family": "moodle",
        "profile-0-max_requests_in_flight": "4",
        "deployments-TOTAL_FORMS": "0",
        "deployments-INITIAL_FORMS": "0",
    }
    data.update(overrides)
    return data


class TestRegistrationOnboarding:
    def test_integration_registers_an_lms_and_it_is_audited(self, tenants, client_for):
        client = client_for(INTEGRATION)
        response = client.post(reverse("admin:lti_tool_ltiregistration_add"), registration_post_data())
        assert response.status_code == 302, response.content.decode()[:3000]
        registration = LtiRegistration.objects.get(client_id="abc123")
        assert registration.profile.lms_family == "moodle"
        created = AuditEntry.objects.get(action="ltiregistration.created")
        assert created.changes["issuer"] == [None, "https://moodle.north.edu"]
        assert AuditEntry.objects.filter(action="registrationprofile.created").exists()

    def test_the_canvas_preset_fills_the_add_form(self, tenants, client_for):
        page = client_for(INTEGRATION).get(reverse("admin:lti_tool_ltiregistration_add") + "?preset=canvas")
        html = page.content.decode()
        assert 'value="https://canvas.instructure.com"' in html
        assert "https://sso.canvaslms.com/login/oauth2/token" in html
        assert '<option value="canvas" selected>' in html

    @pytest.mark.parametrize(
        "overrides,field,message",
        [
            ({"token_url": "not a url"}, "token_url", "Enter a valid URL"),
            ({"issuer": "canvas"}, "issuer", "The issuer must be a URL"),
            ({"auth_url": "https://HOST.example/d2l/lti/authenticate"}, "auth_url", "Replace the placeholder"),
        ],
    )
    def test_bad_urls_are_refused_with_a_clear_error_and_nothing_saved(self, tenants, client_for, overrides, field, message):
        client = client_for(INTEGRATION)
        response = client.post(reverse("admin:lti_tool_ltiregistration_add"), registration_post_data(**overrides))
        assert response.status_code == 200
        assert message in str(response.context["adminform"].form.errors[field])
        assert not LtiRegistration.objects.filter(client_id="abc123").exists()
        assert not AuditEntry.objects.exists()

    def test_duplicate_issuer_and_client_id_is_refused(self, tenants, client_for):
        canvas = tenants[2]
        client = client_for(INTEGRATION)
        response = client.post(
            reverse("admin:lti_tool_ltiregistration_add"),
            registration_post_data(issuer=canvas.issuer, client_id=canvas.client_id),
        )
        assert response.status_code == 200
        assert "already exists" in str(response.context["adminform"].form.errors)
        assert LtiRegistration.objects.filter(client_id=canvas.client_id).count() == 1

    def test_a_slug_clash_is_a_form_error(self, tenants, client_for):
        client = client_for(INTEGRATION)
        response = client.post(
            reverse("admin:institutions_institution_add"),
            {"name": "Northern", "slug": "north", "is_active": "on", "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0"},
        )
        assert response.status_code == 200
        assert "already exists" in str(response.context["adminform"].form.errors["slug"])
        assert Institution.objects.filter(slug="north").count() == 1


class TestToolConfiguration:
    def test_values_the_lms_admin_needs(self, tenants, client_for):
        canvas = tenants[2]
        response = client_for(READ_ONLY).get(reverse("admin:lti_tool_ltiregistration_tool_configuration", args=[canvas.pk]))
        html = response.content.decode()
        assert f"http://testserver/lti/login/{canvas.uuid}/" in html
        assert "http://testserver/lti/launch/" in html
        assert "http://testserver/lti/jwks/" in html
        assert "course_start_date=$Canvas.course.startAt" in html
        assert "https://purl.imsglobal.org/spec/lti-ags/scope/score" in html

    def test_canvas_developer_key_json(self, tenants, client_for):
        canvas = tenants[2]
        response = client_for(INTEGRATION).get(reverse("admin:lti_tool_ltiregistration_tool_configuration", args=[canvas.pk]))
        config = json.loads(response.context["canvas_json"])
        assert config["oidc_initiation_url"] == f"http://testserver/lti/login/{canvas.uuid}/"
        assert config["target_link_uri"] == "http://testserver/lti/launch/"
        assert config["public_jwk_url"] == "http://testserver/lti/jwks/"
        assert "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem" in config["scopes"]
        extension = config["extensions"][0]
        assert extension["platform"] == "canvas.instructure.com"
        assert extension["privacy_level"] == "public"
        placements = {p["placement"]: p for p in extension["settings"]["placements"]}
        assert placements["assignment_selection"]["message_type"] == "LtiDeepLinkingRequest"
        assert placements["link_selection"]["message_type"] == "LtiDeepLinkingRequest"
        assert config["custom_fields"]["course_end_date"] == "$Canvas.course.endAt"
        assert all(value is not None for value in config.values())


class TestPendingDeployments:
    def test_pending_deployments_are_listed_for_the_integration_team(self, tenants, client_for):
        html = client_for(INTEGRATION).get(reverse("admin:lti_tool_ltideployment_changelist") + "?status=pending").content.decode()
        assert "pending-1" in html
        assert "pending" in html

    def test_assigning_goes_through_a_confirmation_page(self, tenants, client_for):
        north = tenants[0]
        pending = LtiDeployment.objects.get(deployment_id="pending-1")
        client = client_for(INTEGRATION)
        url = reverse("admin:lti_tool_ltideployment_changelist")
        confirm = client.post(url, {"action": "assign_to_institution", "_selected_action": [pending.pk]})
        assert confirm.status_code == 200
        assert "Yes, assign" in confirm.content.decode() and "pending-1" in confirm.content.decode()
        pending.refresh_from_db()
        assert not pending.is_active
        done = client.post(
            url,
            {"action": "assign_to_institution", "_selected_action": [pending.pk], "confirm": "1", "institution": north.pk, "activate": "on"},
        )
        assert done.status_code == 302
        pending.refresh_from_db()
        assert pending.is_active and pending.ownership.institution == north
        assert AuditEntry.objects.filter(action="deployment.assigned", institution=north).exists()

    def test_read_only_cannot_assign(self, tenants, client_for):
        pending = LtiDeployment.objects.get(deployment_id="pending-1")
        client = client_for(READ_ONLY)
        client.post(
            reverse("admin:lti_tool_ltideployment_changelist"),
            {"action": "assign_to_institution", "_selected_action": [pending.pk], "confirm": "1", "institution": tenants[0].pk, "activate": "on"},
        )
        assert not DeploymentOwnership.objects.filter(deployment=pending).exists()


def test_support_sets_course_dates_and_the_source_is_recorded(tenants, client_for):
    course = Course.objects.filter(institution=tenants[0]).get()
    client = client_for(SUPPORT)
    response = client.post(
        reverse("admin:institutions_course_change", args=[course.pk]),
        {"starts_at_0": "2026-09-01", "starts_at_1": "00:00:00", "ends_at_0": "2026-12-20", "ends_at_1": "23:59:59"},
    )
    assert response.status_code == 302
    course.refresh_from_db()
    assert course.dates_source == "support"
    entry = AuditEntry.objects.get(action="course.changed")
    assert entry.institution == tenants[0] and entry.changes["ends_at"][0] is None


def test_course_dates_ending_before_start_are_refused(tenants, client_for):
    course = Course.objects.filter(institution=tenants[0]).get()
    response = client_for(SUPPORT).post(
        reverse("admin:institutions_course_change", args=[course.pk]),
        {"starts_at_0": "2026-09-01", "starts_at_1": "00:00:00", "ends_at_0": "2026-08-01", "ends_at_1": "00:00:00"},
    )
    assert response.status_code == 200
    assert "cannot end before it starts" in response.content.decode()
