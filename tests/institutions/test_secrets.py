"""No secret on any admin page, in any audit row or in any log line, for any staff role.

Every admin page is rendered as Support, Integration, Read-only and a superuser, with a tool key,
a registration holding its own private key, grade-sync rows and audit entries of a key rotation and
of a registration edit present; no page may show `PRIVATE KEY` or a line of a private key, and key
material appears as its fingerprint (institutions.keys.fingerprint).
"""
from __future__ import annotations

import importlib
import io
import json
import logging
from decimal import Decimal

import pytest
from django.apps import apps as django_apps
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.core.cache import cache
from django.test import RequestFactory
from django.urls import URLPattern, reverse
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice
from jwcrypto.jwk import JWK
from lti_tool.models import Key, LtiRegistration

from courseware.models import Attempt, AttemptAllowance
from gradesync import admin_support, ags
from gradesync import api as gradesync_api
from gradesync.models import Delivery, DeliveryExchange, DeliveryStatus, ResyncJob, Result, SyncWarning
from institutions.keys import fingerprint
from institutions.dynamic_registration.invitations import create_invitation
from institutions.models import AuditEntry, ContextCopyNotice
from institutions.redaction import RedactSecrets
from institutions.roles import INTEGRATION, READ_ONLY, STAFF_APPS, SUPPORT
from tests.courseware_factories import ActivityLinkFactory, LaunchFactory, LtiUserFactory
from tests.factories import CourseFactory, OwnedDeploymentFactory, RegistrationFactory

pytestmark = pytest.mark.django_db

SUPERUSER = "superuser"
ACCESS_TOKEN = "tok-0b5e55ed-never-shown"


def key_pair() -> tuple[str, str]:
    """(private PEM, public PEM) of a fresh RSA key."""
    jwk = JWK.generate(kty="RSA", size=2048)
    return jwk.export_to_pem(private_key=True, password=None).decode(), jwk.export_to_pem().decode()


def pem_lines(pem: str) -> list[str]:
    """The body lines of a PEM: any one of them on a page is a leak."""
    return [line for line in pem.strip().splitlines() if line and not line.startswith("-----")]


def leaks(text: str, private_pems: list[str]) -> list[str]:
    found = ["PRIVATE KEY"] if "PRIVATE KEY" in text else []
    return found + [line for pem in private_pems for line in pem_lines(pem) if line in text]


def every_private_key(world) -> list[str]:
    """Every private key the database holds or held (the registration's replaced one included)."""
    return [*Key.objects.values_list("private_key", flat=True), *world.retired_private_keys,
            *(pem for pem in LtiRegistration.objects.values_list("private_key", flat=True) if pem)]


def registration_form_data(registration: LtiRegistration, **overrides) -> dict:
    """The registration's change form as the admin posts it (key fields blank: keep the stored keys)."""
    profile = registration.profile
    data = {
        "name": registration.name, "issuer": registration.issuer, "client_id": registration.client_id,
        "audience": registration.audience, "auth_url": registration.auth_url, "token_url": registration.token_url,
        "keyset_url": registration.keyset_url, "is_active": "on", "public_key": "", "private_key": "",
        "profile-TOTAL_FORMS": "1", "profile-INITIAL_FORMS": "1", "profile-MIN_NUM_FORMS": "1",
        "profile-MAX_NUM_FORMS": "1", "profile-0-id": str(profile.pk), "profile-0-registration": str(registration.pk),
        "profile-0-lms_family": profile.lms_family, "profile-0-max_requests_in_flight": str(profile.max_requests_in_flight),
        "profile-0-frame_origins": getattr(profile, "frame_origins", ""),
        "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0",
    }
    data.update(overrides)
    return data


def rotate_tool_key(client) -> Key:
    key = Key.objects.first()
    response = client.post(reverse("admin:lti_tool_key_changelist"),
                           {"action": "publish_new_key", "_selected_action": [key.pk], "index": 0})
    assert response.status_code == 302
    return Key.objects.latest()


@pytest.fixture
def world(two_institutions, admin_client):
    """Keys, a static-key registration with its deployment and course, grade-sync rows, and audit entries
    of a key rotation and of a registration edit that replaced the registration's private key."""
    north, south = two_institutions
    old_private, old_public = key_pair()
    registration = RegistrationFactory(name="Static-key Moodle", public_key=old_public, private_key=old_private)
    deployment = OwnedDeploymentFactory(institution=north, deployment__registration=registration).deployment
    course = CourseFactory(institution=north, deployment=deployment, title="Network+")
    Key.objects.generate()
    learner = LtiUserFactory(registration=registration, sub="learner-1", name="Ada Lovelace")
    link = ActivityLinkFactory(course=course)
    launch = LaunchFactory(course=course, lti_user=learner)
    Attempt.objects.create(activity=link.activity, course=course, activity_link=link, lti_user=learner, launch=launch,
                           number=1, started_at=timezone.now())
    AttemptAllowance.objects.create(course=course, activity=link.activity, attempts_allowed=3)
    gradesync_api.record_result(
        source_ref="secrets-1", lti_user=learner, course=course, activity_key=str(link.activity_id),
        activity_title=link.activity.title, resource_link=link.resource_link, score=Decimal("0.8"),
        completed_at=timezone.now(), launch=gradesync_api.LaunchFacts(role="learner", course=course, deployment=deployment),
    )
    delivery = Delivery.objects.get()
    # An LMS that answers a token request with something odd has its answer recorded: tokens in it are masked.
    answer = f'token endpoint answered 201: {{"access_token": "{ACCESS_TOKEN}"}}'
    DeliveryExchange.objects.create(delivery=delivery, outcome="retry", status_code=201, message=answer)
    Delivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.RETRYING, last_status_code=201, last_message=answer)
    cache.set(ags._token_cache_key(registration, (ags.SCORE_SCOPE,)), ACCESS_TOKEN, 300)  # a live AGS token
    SyncWarning.objects.create(course=course, activity_key="x", kind="duplicate_line_items", message="Two line items")
    ResyncJob.objects.create(institution=north, course=course, requested_by_name="support")
    # A Dynamic Registration link (its token is a secret too: shown once, at creation) and a PNS copy notice.
    _, link = create_invitation(institution=north, actor=None, base_url="https://tool.example/")
    ContextCopyNotice.objects.create(
        deployment=deployment, notice_id="notice-1", context_id_on_platform="copy-1", origin_context_ids=["src-1"],
        course=course, claims={"https://purl.imsglobal.org/spec/lti/claim/notice": {"type": "LtiContextCopyNotice"}},
    )

    rotated = rotate_tool_key(admin_client)
    new_private, new_public = key_pair()
    response = admin_client.post(reverse("admin:lti_tool_ltiregistration_change", args=[registration.pk]),
                                 registration_form_data(registration, private_key=new_private))
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    registration.refresh_from_db()
    assert registration.private_key == new_private.strip() and registration.public_key.strip() == new_public.strip()
    return type("World", (), {
        "north": north, "registration": registration, "course": course, "learner": learner, "delivery": delivery,
        "result": Result.objects.get(), "rotated": rotated, "retired_private_keys": [old_private], "old_public": old_public,
        "invitation_token": link.rstrip("/").rsplit("/", 1)[1],
    })


# --- Every admin page, every role -------------------------------------------------------------

def object_of(model):
    return model._default_manager.order_by("pk").first()


def model_pages(model, model_admin, obj) -> list[str]:
    info = f"{model._meta.app_label}_{model._meta.model_name}"
    urls = [reverse(f"admin:{info}_changelist"), reverse(f"admin:{info}_add")]
    if obj is None:
        return urls
    urls += [reverse(f"admin:{info}_{view}", args=[obj.pk]) for view in ("change", "history", "delete")]
    standard = {f"{info}_{view}" for view in ("changelist", "add", "change", "history", "delete")}
    for pattern in model_admin.get_urls():
        if isinstance(pattern, URLPattern) and pattern.name and pattern.name not in standard:
            params = set(pattern.pattern.converters)
            assert params <= {"object_id", "id", "pk"}, f"{pattern.name}: give the test a value for {params}"
            urls.append(reverse(f"admin:{pattern.name}", kwargs={name: obj.pk for name in params}))
    return urls


def site_pages() -> list[str]:
    """The admin site's own named pages (not log-out: the crawl must stay signed in)."""
    urls = []
    for pattern in admin.site.get_urls():
        if not isinstance(pattern, URLPattern) or not pattern.name or pattern.name == "logout":
            continue
        params = set(pattern.pattern.converters) | set(pattern.pattern.regex.groupindex)
        if pattern.name == "app_list":
            urls += [reverse("admin:app_list", kwargs={"app_label": label})
                     for label in {m._meta.app_label for m in admin.site._registry}]
        elif pattern.name == "view_on_site":
            continue  # a redirect out of the admin, to the object's own page
        else:
            assert not params, f"{pattern.name}: give the test a value for {params}"
            urls.append(reverse(f"admin:{pattern.name}"))
    return urls


def support_pages(world) -> list[str]:
    values = {"delivery_id": world.delivery.pk, "result_id": world.result.pk, "course_id": world.course.pk,
              "lti_user_id": world.learner.pk}
    urls = []
    for pattern in admin_support.urlpatterns:
        params = set(pattern.pattern.converters)
        assert params <= set(values), f"{pattern.name}: give the test a value for {params}"
        urls.append(reverse(pattern.name, kwargs={name: values[name] for name in params}))
    return urls + [reverse("gradesync_why") + f"?user={world.learner.pk}&course={world.course.pk}"]


def action_pages(client, user) -> list:
    """Each admin action this user may run, posted for one object: its confirmation page, or where it leads."""
    request = RequestFactory().get("/")
    request.user = user
    responses = []
    for model, model_admin in admin.site._registry.items():
        obj = object_of(model)
        if obj is None:
            continue
        for name in model_admin.get_actions(request):
            url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
            response = client.post(url, {"action": name, "_selected_action": [obj.pk], "index": 0}, follow=True)
            responses.append((f"{url} action {name}", response))
    return responses


def as_role(role, client_for, admin_client):
    if role == SUPERUSER:
        from django.contrib.auth import get_user_model

        admin_client.user = get_user_model().objects.get(is_superuser=True)
        return admin_client
    return client_for(role)


@pytest.mark.parametrize("role", [SUPPORT, INTEGRATION, READ_ONLY, SUPERUSER])
def test_no_admin_page_shows_a_private_key(world, role, client_for, admin_client):
    client = as_role(role, client_for, admin_client)
    urls = [*site_pages(), *support_pages(world)]
    for model, model_admin in admin.site._registry.items():
        obj = object_of(model)
        if model._meta.app_label in STAFF_APPS:  # third-party ones (2FA devices, login attempts) may be empty
            assert obj is not None, f"the world has no {model.__name__}: its change, history and delete pages go untested"
        urls += model_pages(model, model_admin, obj)
    responses = [(url, client.get(url, follow=True)) for url in urls] + action_pages(client, client.user)

    private_pems = every_private_key(world)
    totp_keys = list(TOTPDevice.objects.values_list("key", flat=True))  # the other secret staff hold
    seen = 0
    for url, response in responses:
        assert response.status_code < 500, url
        assert not response.redirect_chain or "login" not in response.redirect_chain[-1][0], f"{url}: signed out"
        body = response.content.decode()
        assert leaks(body, private_pems) == [], url
        assert ACCESS_TOKEN not in body, url
        assert world.invitation_token not in body, f"{url} shows a Dynamic Registration link after its creation"
        assert not [key for key in totp_keys if key in body], f"{url} shows a staff member's TOTP secret"
        seen += response.status_code == 200
    assert seen >= len(admin.site._registry) * 2  # at least as many pages read as each changelist and change page

    # Key material appears as its fingerprint where keys are.
    for key in Key.objects.all():
        assert fingerprint(key.public_key) in client.get(reverse("admin:lti_tool_key_changelist")).content.decode()
    key_page = client.get(reverse("admin:lti_tool_key_change", args=[world.rotated.pk])).content.decode()
    assert fingerprint(world.rotated.public_key) in key_page
    registration_page = client.get(reverse("admin:lti_tool_ltiregistration_change", args=[world.registration.pk]))
    assert fingerprint(world.registration.public_key) in registration_page.content.decode()
    trail = client.get(reverse("admin:institutions_auditentry_changelist")).content.decode()
    assert fingerprint(world.rotated.public_key) in trail  # the rotation, by fingerprint
    assert fingerprint(world.old_public) in trail and fingerprint(world.registration.public_key) in trail


def test_fingerprint_is_kid_and_sha256_of_the_public_key_whichever_half_is_given():
    private, public = key_pair()
    shown = fingerprint(public)
    kid = JWK.from_pem(public.encode()).thumbprint()
    assert shown.startswith(f"kid {kid} · SHA256:") and len(shown.split("SHA256:")[1].split(":")) == 32
    assert fingerprint(private) == shown  # a private key is named by its public half
    assert fingerprint("not a key") == "unreadable key" and fingerprint("") == ""


# --- The registration's own key pair: write-only ----------------------------------------------

def test_the_registration_private_key_is_write_only(world, client_for):
    client = client_for(INTEGRATION)
    registration = world.registration
    url = reverse("admin:lti_tool_ltiregistration_change", args=[registration.pk])
    page = client.get(url)
    form = page.context["adminform"].form
    assert form["private_key"].value() is not None  # the form knows the stored key…
    assert leaks(str(form["private_key"]) + str(form["public_key"]), every_private_key(world)) == []  # …never renders it
    assert 'name="private_key"' in page.content.decode()  # but a new one can be pasted

    # Blank keeps the stored pair; saving other fields changes nothing about the keys.
    stored = registration.private_key
    assert client.post(url, registration_form_data(registration, name="Renamed Moodle")).status_code == 302
    registration.refresh_from_db()
    assert registration.private_key == stored and registration.name == "Renamed Moodle"

    # Refused, without echoing what was pasted: garbage, a private key in the public box, a mismatched pair.
    other_private, other_public = key_pair()
    for data, field, reason in [
        ({"private_key": "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----"}, "private_key", "Not a readable private key"),
        ({"public_key": other_private}, "public_key", "This is a private key"),
        ({"private_key": other_private, "public_key": world.old_public}, "private_key", "does not belong"),
    ]:
        response = client.post(url, registration_form_data(registration, **data))
        assert response.status_code == 200
        assert reason in " ".join(response.context["adminform"].form.errors[field])
        assert leaks(response.content.decode(), [other_private, stored]) == []
        registration.refresh_from_db()
        assert registration.private_key == stored

    # Removing the pair hands signing back to the tool's published keys.
    assert client.post(url, registration_form_data(registration, remove_key_pair="on")).status_code == 302
    registration.refresh_from_db()
    assert registration.private_key == "" and registration.public_key == "" and not registration.has_key
    removal = AuditEntry.objects.filter(action="ltiregistration.changed").first()
    assert removal.changes["private_key"] == [fingerprint(stored), "removed"]


def test_read_only_staff_cannot_replace_a_key(world, client_for):
    client = client_for(READ_ONLY)
    registration = world.registration
    stored = registration.private_key
    new_private, _ = key_pair()
    response = client.post(reverse("admin:lti_tool_ltiregistration_change", args=[registration.pk]),
                           registration_form_data(registration, private_key=new_private))
    assert response.status_code == 403
    registration.refresh_from_db()
    assert registration.private_key == stored
    page = client.get(reverse("admin:lti_tool_ltiregistration_change", args=[registration.pk])).content.decode()
    assert 'name="private_key"' not in page and fingerprint(registration.public_key) in page


# --- Audit rows and Django's LogEntry -----------------------------------------------------------

def test_audit_rows_and_log_entries_hold_no_key_material(world, client_for):
    client = client_for(INTEGRATION)
    rotated = rotate_tool_key(client)
    new_private, new_public = key_pair()
    registration = world.registration
    previous = registration.private_key
    response = client.post(reverse("admin:lti_tool_ltiregistration_change", args=[registration.pk]),
                           registration_form_data(registration, private_key=new_private, public_key=new_public))
    assert response.status_code == 302

    secrets = every_private_key(world) + [previous, new_private]
    for entry in AuditEntry.objects.all():
        assert leaks(json.dumps(entry.changes) + entry.object_repr, secrets) == [], entry.action
    for entry in LogEntry.objects.all():
        assert leaks(entry.change_message + entry.object_repr, secrets) == [], entry.change_message

    rotation = AuditEntry.objects.filter(action="key.rotated", actor_name=client.user.username).get()
    assert rotation.changes["public_key"] == ["none", f"set: {fingerprint(rotated.public_key)}"]
    edit = AuditEntry.objects.filter(action="ltiregistration.changed", actor_name=client.user.username).get()
    assert edit.changes["private_key"] == [fingerprint(previous), f"changed: {fingerprint(new_public)}"]
    assert edit.changes["public_key"] == [fingerprint(previous), f"changed: {fingerprint(new_public)}"]
    assert "private key" in LogEntry.objects.filter(object_id=str(registration.pk)).first().get_change_message().lower()


def test_a_private_key_pasted_in_any_field_never_reaches_the_trail(world):
    from institutions.audit import record_staff_change

    pem, _ = key_pair()
    entry = record_staff_change(actor=None, action="test.changed", obj=world.registration,
                                changes={"audience": ("", f"oops {pem}"), "name": ("a", "b")})
    assert leaks(json.dumps(entry.changes), [pem]) == [] and entry.changes["name"] == ["a", "b"]


def test_the_migration_masks_private_keys_in_older_audit_rows(world, admin_client):
    pem, _ = key_pair()
    old = AuditEntry.objects.create(actor_name="before-the-fix", action="ltiregistration.changed",
                                    changes={"private_key": ["", pem], "name": ["a", "b"]})
    # Such a row is masked on the page even before the migration rewrites it.
    page = admin_client.get(reverse("admin:institutions_auditentry_change", args=[old.pk])).content.decode()
    assert leaks(page, [pem]) == [] and "[redacted]" in page

    migration = importlib.import_module("institutions.migrations.0004_redact_private_keys_in_audit_entries")
    migration.redact_private_keys(django_apps, None)
    old.refresh_from_db()
    assert leaks(json.dumps(old.changes), [pem]) == []
    assert old.changes == {"private_key": ["", "[redacted] private key\n"], "name": ["a", "b"]}


# --- Logs ---------------------------------------------------------------------------------------

@pytest.fixture
def log_output():
    """What the configured root handler (config/settings.py LOGGING) writes, captured."""
    handlers = [h for h in logging.getLogger().handlers if any(isinstance(f, RedactSecrets) for f in h.filters)]
    assert handlers, "the root logger's handler has no RedactSecrets filter"
    stream = io.StringIO()
    previous = [h.setStream(stream) for h in handlers]
    yield stream
    for handler, old in zip(handlers, previous):
        handler.setStream(old)


def test_logs_never_carry_keys_tokens_or_assertions(log_output):
    pem, _ = key_pair()
    assertion = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ0b29sIn0.c2lnbmF0dXJlLXZhbHVl"
    log = logging.getLogger("gradesync.ags")
    log.warning("signing with %s", pem)
    log.warning("posting score: headers=%r", {"Authorization": f"Bearer {ACCESS_TOKEN}"})
    log.warning('token endpoint answered: {"access_token": "%s", "expires_in": 3600}', ACCESS_TOKEN)
    log.warning("token request body: grant_type=client_credentials&client_assertion=%s&scope=x", assertion)
    logging.getLogger("django.request").error("request failed: %s", {"client_assertion": assertion})
    log.warning("a name glued to it: hint_%s", assertion)  # no word boundary before the JWT
    try:
        raise ValueError(f"bad key {pem}")
    except ValueError:
        log.exception("could not sign")

    written = log_output.getvalue()
    assert "signing with" in written and "could not sign" in written and "request failed" in written
    assert leaks(written, [pem]) == []
    assert ACCESS_TOKEN not in written and assertion not in written and "c2lnbmF0dXJlLXZhbHVl" not in written
    assert "hint_[redacted] jwt" in written
    assert written.count("[redacted]") >= 7


def test_a_celery_worker_s_own_log_handlers_redact_too():
    """A worker replaces the root logger's handlers with its own; after_setup_logger filters them."""
    from celery.signals import after_setup_logger

    stream = io.StringIO()
    worker_log = logging.getLogger("tests.celery-worker-root")
    worker_log.addHandler(logging.StreamHandler(stream))
    worker_log.propagate = False
    after_setup_logger.send(sender=None, logger=worker_log, loglevel=logging.INFO, logfile=None, format="", colorize=False)
    worker_log.warning("POST token: Authorization: Bearer %s", ACCESS_TOKEN)
    assert "Bearer [redacted]" in stream.getvalue() and ACCESS_TOKEN not in stream.getvalue()


def test_log_records_without_secrets_are_untouched(log_output):
    logging.getLogger("gradesync.services").warning("delivery %s sent in %d ms", 42, 120)
    assert "delivery 42 sent in 120 ms" in log_output.getvalue()


# --- Grade sync support pages -------------------------------------------------------------------

def test_an_lms_answer_holding_a_token_is_masked_on_support_pages(world, client_for):
    client = client_for(SUPPORT)
    for url in [reverse("admin:gradesync_delivery_change", args=[world.delivery.pk]),
                reverse("gradesync_why_delivery", args=[world.delivery.pk])]:
        body = client.get(url, follow=True).content.decode()
        assert ACCESS_TOKEN not in body, url
        assert "token endpoint answered 201" in body and "[redacted]" in body, url


def test_the_tool_configuration_shows_only_public_values(world, client_for):
    page = client_for(INTEGRATION).get(
        reverse("admin:lti_tool_ltiregistration_tool_configuration", args=[world.registration.pk])
    )
    body = page.content.decode()
    assert leaks(body, every_private_key(world)) == [] and "PUBLIC KEY" not in body
    assert "/lti/jwks/" in json.loads(page.context["canvas_json"])["public_jwk_url"]


def test_a_token_in_an_lms_answer_is_masked_where_it_is_kept():
    """A token endpoint answering a token with an error status: what support will read holds no token."""
    from gradesync import ags

    body = '{"access_token": "live-token-abc123", "token_type": "Bearer"}'
    error = ags.TokenError(f"token endpoint answered 400: {body}", 400, body, {})

    assert "live-token-abc123" not in str(error) and "live-token-abc123" not in error.body
    assert "token endpoint answered 400" in str(error)
