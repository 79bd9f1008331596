"""The registration, institution and deployment forms refuse what would make a broken registration.

Through the admin as the integration team uses it: each refusal is a form error with nothing written
(no row, no audit entry); what is accepted is stored normalised; a pending deployment is assigned and
activated in one click from its own page; a deployment's registration never moves.
"""
from __future__ import annotations

import pytest
from django.urls import reverse
from lti_tool.models import LtiDeployment, LtiRegistration

from institutions.models import AuditEntry, DeploymentOwnership, Institution
from institutions.roles import INTEGRATION, READ_ONLY
from institutions.tool_configuration import is_draft
from tests.factories import DeploymentFactory, OwnedDeploymentFactory, RegistrationFactory
from tests.institutions.test_admin import registration_post_data

pytestmark = pytest.mark.django_db

ADD_URL = "admin:lti_tool_ltiregistration_add"




def refused(response, field: str) -> str:
    """The form error on `field` of a refused add (the page is shown again, not a redirect)."""
    assert response.status_code == 200, response.status_code
    errors = response.context["adminform"].form.errors
    assert field in errors, errors
    return str(errors[field])


def nothing_written() -> bool:
    return not LtiRegistration.objects.filter(client_id__contains="abc").exists() and not AuditEntry.objects.exists()


# --- Issuer and client id ---------------------------------------------------------------------


def test_issuer_and_client_id_are_stored_normalised(client_for):
    response = client_for(INTEGRATION).post(
        reverse(ADD_URL), registration_post_data(issuer="  https://moodle.north.edu/  ", client_id="  abc123\t")
    )
    assert response.status_code == 302
    registration = LtiRegistration.objects.get()
    assert (registration.issuer, registration.client_id) == ("https://moodle.north.edu", "abc123")
    created = AuditEntry.objects.get(action="ltiregistration.created")
    assert created.changes["issuer"] == [None, "https://moodle.north.edu"]


@pytest.mark.parametrize("stored_issuer,posted_issuer", [
    ("https://canvas.instructure.com", "https://canvas.instructure.com/"),
    ("https://canvas.instructure.com/", "https://canvas.instructure.com"),  # a row saved before normalising
])
def test_the_same_issuer_with_or_without_a_trailing_slash_is_one_registration(client_for, stored_issuer, posted_issuer):
    RegistrationFactory(name="State Canvas", issuer=stored_issuer, client_id="10000000000042")
    response = client_for(INTEGRATION).post(
        reverse(ADD_URL), registration_post_data(issuer=posted_issuer, client_id=" 10000000000042 ")
    )
    error = refused(response, "client_id")
    assert "already exists" in error and "State Canvas" in error
    assert LtiRegistration.objects.count() == 1
    assert not AuditEntry.objects.exists()


def test_changing_a_registration_keeps_its_own_issuer_and_client_id(client_for):
    registration = RegistrationFactory(name="State Canvas", issuer="https://canvas.instructure.com", client_id="77")
    profile = registration.profile
    data = registration_post_data(
        name="State Canvas (renamed)", issuer="https://canvas.instructure.com/", client_id="77",
        auth_url=registration.auth_url, token_url=registration.token_url, keyset_url=registration.keyset_url,
        **{"profile-INITIAL_FORMS": "1", "profile-0-id": str(profile.pk), "profile-0-registration": str(registration.pk),
           "profile-0-lms_family": "canvas"},
    )
    response = client_for(INTEGRATION).post(reverse("admin:lti_tool_ltiregistration_change", args=[registration.pk]), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    registration.refresh_from_db()
    assert registration.name == "State Canvas (renamed)"


@pytest.mark.parametrize("client_id", ["abc 123", "abc\u200b123", "abc\x07123", "ab\nc123"])
def test_a_client_id_with_inner_whitespace_or_control_characters_is_refused(client_for, client_id):
    response = client_for(INTEGRATION).post(reverse(ADD_URL), registration_post_data(client_id=client_id))
    assert "no spaces or invisible characters" in refused(response, "client_id")
    assert nothing_written()


def test_a_blank_client_id_saves_a_draft_that_matches_no_launch(client_for):
    client = client_for(INTEGRATION)
    assert "Leave blank to save a draft" in client.get(reverse(ADD_URL)).content.decode()
    response = client.post(reverse(ADD_URL), registration_post_data(client_id="  \t"))
    assert response.status_code == 302
    registration = LtiRegistration.objects.get()
    assert is_draft(registration) and not registration.is_active
    assert response["Location"] == reverse("admin:lti_tool_ltiregistration_tool_configuration", args=[registration.pk])


# --- Endpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["auth_url", "token_url", "keyset_url"])
def test_a_plain_http_endpoint_of_a_real_host_is_refused(client_for, field):
    response = client_for(INTEGRATION).post(
        reverse(ADD_URL), registration_post_data(**{field: "http://moodle.north.edu/mod/lti/x.php"})
    )
    assert "https" in refused(response, field)
    assert nothing_written()


def test_endpoints_typed_without_a_scheme_are_saved_as_https(client_for):
    response = client_for(INTEGRATION).post(reverse(ADD_URL), registration_post_data(
        auth_url="moodle.north.edu/mod/lti/auth.php", token_url="moodle.north.edu/mod/lti/token.php",
        keyset_url="moodle.north.edu/mod/lti/certs.php"))
    assert response.status_code == 302
    registration = LtiRegistration.objects.get()
    assert (registration.auth_url, registration.token_url, registration.keyset_url) == (
        "https://moodle.north.edu/mod/lti/auth.php", "https://moodle.north.edu/mod/lti/token.php",
        "https://moodle.north.edu/mod/lti/certs.php")


LOOPBACK = {
    "issuer": "http://127.0.0.1:8000/sandbox-lms",
    "auth_url": "http://127.0.0.1:8000/sandbox-lms/auth/",
    "token_url": "http://localhost:8000/sandbox-lms/token/",
    "keyset_url": "http://[::1]:8000/sandbox-lms/jwks/",
}


@pytest.mark.parametrize("debug,sandbox", [(True, False), (False, True)])
def test_a_loopback_http_platform_is_allowed_in_development_or_the_sandbox(client_for, settings, debug, sandbox):
    settings.DEBUG, settings.SANDBOX_LMS = debug, sandbox
    response = client_for(INTEGRATION).post(reverse(ADD_URL), registration_post_data(**LOOPBACK))
    assert response.status_code == 302
    assert LtiRegistration.objects.get().token_url == "http://localhost:8000/sandbox-lms/token/"


def test_a_loopback_http_platform_is_refused_in_production(client_for, settings):
    settings.DEBUG, settings.SANDBOX_LMS = False, False
    response = client_for(INTEGRATION).post(reverse(ADD_URL), registration_post_data(**LOOPBACK))
    for field in ("auth_url", "token_url", "keyset_url"):
        assert "development or sandbox" in refused(response, field)
    assert not LtiRegistration.objects.exists() and not AuditEntry.objects.exists()


def test_http_to_a_host_that_only_starts_like_loopback_is_refused_even_in_the_sandbox(client_for, settings):
    settings.SANDBOX_LMS = True
    response = client_for(INTEGRATION).post(
        reverse(ADD_URL), registration_post_data(token_url="http://127.0.0.1.evil.example/token")
    )
    assert "https" in refused(response, "token_url")
    assert nothing_written()


# --- Help and names ---------------------------------------------------------------------------


def test_each_field_says_where_each_lms_shows_it(client_for):
    html = client_for(INTEGRATION).get(reverse(ADD_URL)).content.decode()
    assert "Canvas: the developer key's number" in html
    for moodle_label in ("Platform ID", "Client ID", "Public keyset URL", "Access token URL", "Authentication request URL"):
        assert moodle_label in html
    assert "Brightspace OAuth2 Audience" in html


def test_a_preset_opened_for_an_institution_names_the_registration_after_both(client_for, two_institutions):
    north, _ = two_institutions
    client = client_for(INTEGRATION)
    institution_page = client.get(reverse("admin:institutions_institution_change", args=[north.pk])).content.decode()
    add_for_north = f"{reverse(ADD_URL)}?institution={north.pk}"
    assert add_for_north in institution_page
    assert f"?preset=canvas&amp;institution={north.pk}" in client.get(add_for_north).content.decode()
    form = client.get(f"{reverse(ADD_URL)}?preset=canvas&institution={north.pk}").context["adminform"].form
    assert form.initial["name"] == "North College — Canvas"


def test_a_preset_without_an_institution_is_named_after_the_lms_and_issuer_host(client_for):
    form = client_for(INTEGRATION).get(f"{reverse(ADD_URL)}?preset=canvas").context["adminform"].form
    assert form.initial["name"] == "Canvas — canvas.instructure.com"


def test_a_blank_name_is_filled_in_on_save(client_for, two_institutions):
    client = client_for(INTEGRATION)
    assert client.post(reverse(ADD_URL), registration_post_data(name="")).status_code == 302
    assert LtiRegistration.objects.get().name == "Moodle — moodle.north.edu"
    north, _ = two_institutions
    response = client.post(
        f"{reverse(ADD_URL)}?institution={north.pk}", registration_post_data(name="", client_id="abc456")
    )
    assert response.status_code == 302
    assert LtiRegistration.objects.get(client_id="abc456").name == "North College — Moodle"


# --- Institution slugs ------------------------------------------------------------------------


def institution_post(**overrides) -> dict:
    return {"name": "Northern", "slug": "north", "is_active": "on",
            "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0", **overrides}


@pytest.mark.parametrize("slug", ["North", "NORTH", "north"])
def test_institution_slugs_are_unique_in_any_case(client_for, two_institutions, slug):
    response = client_for(INTEGRATION).post(reverse("admin:institutions_institution_add"), institution_post(slug=slug))
    error = refused(response, "slug")
    assert "already exists" in error and "North College" in error
    assert Institution.objects.filter(slug__iexact="north").count() == 1
    assert not AuditEntry.objects.exists()


def test_a_new_slug_is_stored_lower_case(client_for, two_institutions):
    response = client_for(INTEGRATION).post(reverse("admin:institutions_institution_add"), institution_post(slug="West-Tech"))
    assert response.status_code == 302
    assert Institution.objects.filter(slug="west-tech").exists()


def test_the_database_refuses_a_case_variant_slug_too(two_institutions):
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        Institution.objects.create(name="Northern", slug="NORTH")


# --- Deployments ------------------------------------------------------------------------------


@pytest.fixture
def pending(two_institutions):
    """A pending deployment of a registration whose only other deployment belongs to North College."""
    north, _ = two_institutions
    registration = RegistrationFactory(name="North Moodle")
    OwnedDeploymentFactory(institution=north, deployment__registration=registration)
    return DeploymentFactory(registration=registration, deployment_id="pending-7", is_active=False)


def assign_url(deployment: LtiDeployment) -> str:
    return reverse("admin:lti_tool_ltideployment_assign_and_activate", args=[deployment.pk])


def test_a_pending_deployment_is_assigned_and_activated_in_one_click_from_its_page(client_for, pending, two_institutions):
    north, _ = two_institutions
    client = client_for(INTEGRATION)
    page = client.get(reverse("admin:lti_tool_ltideployment_change", args=[pending.pk])).content.decode()
    assert "Assign to North College and activate" in page and assign_url(pending) in page
    response = client.post(assign_url(pending), {"institution": north.pk})
    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.is_active and pending.ownership.institution == north
    entry = AuditEntry.objects.get(action="deployment.assigned")
    assert entry.institution == north and entry.actor == client.user
    assert entry.changes["is_active"] == [False, True]
    page = client.get(reverse("admin:lti_tool_ltideployment_change", args=[pending.pk])).content.decode()
    assert assign_url(pending) not in page  # no longer pending


def test_without_a_likely_institution_the_page_asks_which(client_for, two_institutions):
    _, south = two_institutions
    lonely = DeploymentFactory(deployment_id="pending-8", is_active=False)
    client = client_for(INTEGRATION)
    page = client.get(reverse("admin:lti_tool_ltideployment_change", args=[lonely.pk])).content.decode()
    assert "Assign to this institution and activate" in page and 'name="institution"' in page
    assert client.post(assign_url(lonely), {"institution": south.pk}).status_code == 302
    assert DeploymentOwnership.objects.get(deployment=lonely).institution == south


def test_a_deployment_owned_elsewhere_is_not_reassigned(client_for, pending, two_institutions):
    north, south = two_institutions
    DeploymentOwnership.objects.create(deployment=pending, institution=north)
    client = client_for(INTEGRATION)
    response = client.post(assign_url(pending), {"institution": south.pk}, follow=True)
    assert "already belongs to North College" in response.content.decode()
    pending.refresh_from_db()
    assert not pending.is_active and pending.ownership.institution == north
    assert not AuditEntry.objects.exists()


def test_read_only_staff_cannot_assign_in_one_click(client_for, pending, two_institutions):
    client = client_for(READ_ONLY)
    page = client.get(reverse("admin:lti_tool_ltideployment_change", args=[pending.pk])).content.decode()
    assert assign_url(pending) not in page
    assert client.post(assign_url(pending), {"institution": two_institutions[0].pk}).status_code == 403
    pending.refresh_from_db()
    assert not pending.is_active and not DeploymentOwnership.objects.filter(deployment=pending).exists()


def test_one_click_needs_a_post_and_an_institution(client_for, pending):
    client = client_for(INTEGRATION)
    assert client.get(assign_url(pending)).status_code == 302
    response = client.post(assign_url(pending), {"institution": "999999"}, follow=True)
    assert "Choose the institution" in response.content.decode()
    pending.refresh_from_db()
    assert not pending.is_active and not AuditEntry.objects.exists()


def test_a_deployments_registration_cannot_be_changed(client_for, pending):
    other = RegistrationFactory(name="Other LMS")
    client = client_for(INTEGRATION)
    url = reverse("admin:lti_tool_ltideployment_change", args=[pending.pk])
    form = client.get(url).context["adminform"].form
    assert "registration" not in form.fields  # shown, not editable
    response = client.post(url, {"registration": other.pk, "deployment_id": "pending-7", "is_active": ""})
    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.registration.name == "North Moodle"


def test_a_new_deployment_still_chooses_its_registration(admin_client):
    form = admin_client.get(reverse("admin:lti_tool_ltideployment_add")).context["adminform"].form
    assert "registration" in form.fields


def test_one_click_on_an_unknown_deployment_is_a_404(client_for, two_institutions):
    client = client_for(INTEGRATION)
    for object_id in ("999999", "not-a-number"):
        url = reverse("admin:lti_tool_ltideployment_assign_and_activate", args=[object_id])
        assert client.post(url, {"institution": two_institutions[0].pk}).status_code == 404
    assert not AuditEntry.objects.exists()
