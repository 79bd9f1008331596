"""Demo wiring for `make run`: a sandbox course ready to launch, registered with the tool.

This is the one place where the sandbox writes the tool's tables: it plays the LMS admin who
pastes the platform's values into the tool (a registration, an active deployment owned by the
demo institution, a RegistrationProfile). Everything after that goes over HTTP.
"""
from __future__ import annotations

from typing import Any

from django.db import transaction
from lti_tool.models import Key, LtiDeployment, LtiRegistration

from institutions.models import DeploymentOwnership, Institution, LmsFamily, RegistrationProfile
from institutions.tool_configuration import custom_parameters, tool_urls

from . import api
from .models import Profile, SandboxPlatform

DEMO_CLIENT_ID = "sandbox-demo-tool"
DEMO_DEPLOYMENT_ID = "1:sandbox-demo-deployment"


@transaction.atomic
def load_demo(*, base_url: str, stdout: Any) -> None:
    sandbox_url = f"{base_url}/sandbox-lms"
    if SandboxPlatform.objects.filter(issuer=sandbox_url, registrations__client_id=DEMO_CLIENT_ID).exists():
        stdout.write(f"  Sandbox LMS already seeded at {sandbox_url}/")
        return
    platform = api.create_platform(base_url=sandbox_url, name="Sandbox LMS (Canvas-like)")
    tool_registration, _ = LtiRegistration.objects.update_or_create(
        issuer=platform.issuer,
        client_id=DEMO_CLIENT_ID,
        defaults={
            "name": "Sandbox LMS (demo)",
            "auth_url": platform.url("auth/"),
            "token_url": platform.url("token/"),
            "keyset_url": platform.url("jwks/"),
            "is_active": True,
        },
    )
    tool_deployment, _ = LtiDeployment.objects.update_or_create(
        registration=tool_registration, deployment_id=DEMO_DEPLOYMENT_ID, defaults={"is_active": True}
    )
    DeploymentOwnership.objects.get_or_create(
        deployment=tool_deployment, defaults={"institution": Institution.objects.get(slug="demo-college")}
    )
    RegistrationProfile.objects.update_or_create(
        registration=tool_registration, defaults={"lms_family": LmsFamily.CANVAS}
    )
    if not Key.objects.filter(is_active=True).exists():
        Key.objects.generate()
    urls = tool_urls(base_url, tool_registration)
    seeded = api.seed_platform(
        base_url=sandbox_url,
        client_id=DEMO_CLIENT_ID,
        deployment_id=DEMO_DEPLOYMENT_ID,
        login_url=urls["login"],
        launch_url=urls["launch"],
        deep_linking_url=urls["deep_linking"],
        jwks_url=urls["jwks"],
        profile=Profile.CANVAS,
        custom=custom_parameters(LmsFamily.CANVAS),
        name="Courseware Grade Sync",
    )
    _bind_demo_link(seeded)
    stdout.write(
        f"  Sandbox LMS: course “{seeded.course.title}” with {seeded.instructor.name} and "
        f"{len(seeded.students)} students, registered with the tool as client id {DEMO_CLIENT_ID}."
    )


def _bind_demo_link(seeded: api.Seeded) -> None:
    """Make the seeded graded link open a real catalog quiz, as if the instructor had placed it.

    Without it the demo course's first link would open "not connected to an activity".
    """
    from courseware.models import Activity

    quiz = Activity.objects.filter(slug="netplus-osi-quiz").first()
    if quiz is None:
        return
    link = seeded.resource_link
    link.title = quiz.title
    link.custom = {"activity_id": str(quiz.pk)}
    link.save(update_fields=["title", "custom"])
    line_item = seeded.line_item
    line_item.label = quiz.title
    line_item.resource_id = str(quiz.pk)
    line_item.tag = "courseware"
    line_item.score_maximum = float(quiz.default_points)
    line_item.save(update_fields=["label", "resource_id", "tag", "score_maximum"])
