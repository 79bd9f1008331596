"""Headless Chromium: a Read-only staff member walks the onboarding admin and is offered nothing it cannot finish."""
from __future__ import annotations

from urllib.parse import urlparse

from django.urls import reverse
from lti_tool.models import Key

from institutions.dynamic_registration.invitations import create_invitation
from institutions.roles import READ_ONLY
from tests.browser import ARTIFACTS, browser_marks, follow, log_in, page, staff_roles  # noqa: F401 (fixtures)
from tests.factories import CourseFactory, DeploymentFactory, OwnedDeploymentFactory, RegistrationFactory

pytestmark = browser_marks


def offered_links(page) -> list[str]:
    """Every link on the page a person could follow (content, sidebar, header), as this site's paths."""
    hrefs = page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")
    return sorted({href for href in hrefs if urlparse(href).netloc == urlparse(page.url).netloc and "#" not in href})


def assert_nothing_refused(page, seen: set[str]) -> None:
    """Follow (as the same signed-in browser) each link the page offers: none answers 403."""
    for href in offered_links(page):
        if href in seen:
            continue
        seen.add(href)
        assert page.request.get(href).status != 403, f"{page.url} offers {href}, which refuses Read-only"
    # No admin action, no onboarding button, no add button, whatever the page.
    assert page.locator("select[name=action] option:not([value=''])").count() == 0, page.url
    assert page.locator("a.addlink:visible").count() == 0, page.url  # inlines keep a hidden "Add another" row
    assert page.get_by_role("button", name="and activate").count() == 0, page.url


def test_read_only_walks_the_onboarding_admin_and_is_offered_nothing_it_cannot_finish(page, live_server, two_institutions, staff_user):
    north, south = two_institutions
    canvas = RegistrationFactory(name="State Canvas")
    for institution in (north, south):
        deployment = OwnedDeploymentFactory(institution=institution, deployment__registration=canvas).deployment
        CourseFactory(institution=institution, deployment=deployment)
    DeploymentFactory(registration=canvas, deployment_id="pending-1", is_active=False)
    Key.objects.generate()
    create_invitation(institution=north, actor=None, base_url=live_server.url + "/")

    log_in(page, live_server, staff_user, READ_ONLY)
    assert "Read-only" in page.text_content("#staff-role")  # the header says what this account may do
    seen: set[str] = set()
    assert_nothing_refused(page, seen)

    # Index → registrations → the Canvas registration → its tool configuration.
    follow(page, "#content-main a[href$='/lti_tool/ltiregistration/']")
    assert_nothing_refused(page, seen)
    follow(page, "#result_list >> text=State Canvas")
    assert_nothing_refused(page, seen)
    follow(page, "text=Tool configuration for the LMS admin")
    assert "staff with the Integration role make these links" in page.inner_text("#cfg-dynamic-registration")
    assert_nothing_refused(page, seen)

    # Deployments → the pending one: no "Assign … and activate" for Read-only.
    page.goto(live_server.url + reverse("admin:lti_tool_ltideployment_changelist"))
    assert_nothing_refused(page, seen)
    follow(page, "#result_list >> text=pending-1")
    assert page.locator("form[action$='/assign-and-activate/']").count() == 0
    assert_nothing_refused(page, seen)

    # Keys: the key is listed, Rotate is not offered.
    page.goto(live_server.url + reverse("admin:lti_tool_key_changelist"))
    assert page.locator("#result_list tbody tr").count() >= 1
    assert "Rotate" not in page.content()
    assert_nothing_refused(page, seen)
    page.screenshot(path=str(ARTIFACTS / "read-only-keys.png"), full_page=True)

    # "View site" goes to the landing page.
    follow(page, "#user-tools >> text=View site")
    assert page.url == live_server.url + "/"
    assert page.locator("#admin-link").count() == 1 and page.locator("#jwks-link").count() == 1
    assert len(seen) > 30
