"""The sandbox LMS as a library for tests and benchmarks. Not for production.

Seed a platform with `seed_platform(...)` (one call: platform, registration, deployment, a
course with dates, an instructor and three students, a graded resource link), change a
registration's behaviour with `configure_registration` / `set_faults`, drive a launch over HTTP
with `start_launch` + `follow_launch`, and read what happened with `request_log` and `grades`.

Running the sandbox as its own server process (the grade-sync benchmark does this)::

    SANDBOX_LMS=True DJANGO_SETTINGS_MODULE=sandbox_lms.server_settings \\
        DATABASE_URL=postgres://postgres@127.0.0.1:5432/sandbox \\
        .venv/bin/gunicorn sandbox_lms.wsgi:application --bind 127.0.0.1:8100 \\
        --worker-class gevent --workers 2 --worker-connections 100 --keep-alive 30

`sandbox_lms.wsgi` answers POST …/scores in a lean WSGI front before Django (`sandbox_lms.fast`:
the same exchange as the view, a small psycopg pool per process, the request log written in
batches within `fast.LOG_FLUSH_SECONDS`; `request_log` below flushes this process's batch first).

`sandbox_lms.server_settings` is the project's settings with only what the sandbox needs
(no session, CSRF or auth middleware; the sandbox's urls at `/sandbox-lms/`). Seed it from
another process against the same database with `seed_platform(base_url="http://127.0.0.1:8100/sandbox-lms", ...)`:
the server trusts changes to registrations within a second (`caches.CONFIG_TTL`).
`scripts/sandbox_bench.py` starts such a server and measures the scores endpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import requests
from django.utils import timezone

from . import fast
from .behaviour import FAULT_FIELDS, set_faults
from .caches import forget_caches, reset_rate_limits
from .courses import copy_course, gradebook, grades, move_course
from .launches import LoginInitiation, start_launch
from .models import (
    Profile,
    Role,
    SandboxCourse,
    SandboxDeployment,
    SandboxLineItem,
    SandboxPlatform,
    SandboxRegistration,
    SandboxRequestLog,
    SandboxResourceLink,
    SandboxResult,
    SandboxUser,
)
from .platform import (
    add_deployment,
    add_resource_link,
    configure_registration,
    create_course,
    create_line_item,
    create_platform,
    create_user,
    enrol,
    line_item_url,
    line_items_url,
    platform_jwks,
    register_tool,
    rotate_platform_key,
)
from .protocol import SCORE_MEDIA_TYPE, SUPPORTED_SCOPES

__all__ = [
    "FAULT_FIELDS", "SCORE_MEDIA_TYPE", "SUPPORTED_SCOPES", "LoginInitiation", "Profile", "Role", "Seeded",
    "SandboxCourse", "SandboxDeployment", "SandboxLineItem", "SandboxPlatform", "SandboxRegistration",
    "SandboxResourceLink", "SandboxResult", "SandboxUser", "add_deployment", "add_resource_link",
    "configure_registration", "copy_course", "create_course", "create_line_item", "create_platform", "create_user",
    "enrol", "follow_launch", "forget_caches", "gradebook", "grades", "line_item_url", "line_items_url",
    "move_course", "parse_autopost", "platform_jwks", "register_tool", "request_log", "reset_rate_limits",
    "rotate_platform_key", "seed_platform", "set_faults", "start_deep_linking", "start_launch",
]


@dataclass
class Seeded:
    platform: SandboxPlatform
    registration: SandboxRegistration
    deployment: SandboxDeployment
    course: SandboxCourse
    instructor: SandboxUser
    students: list[SandboxUser]
    resource_link: SandboxResourceLink
    line_item: SandboxLineItem

    @property
    def token_url(self) -> str:
        return self.platform.url("token/")

    @property
    def auth_url(self) -> str:
        return self.platform.url("auth/")

    @property
    def jwks_url(self) -> str:
        return self.platform.url("jwks/")

    @property
    def line_item_url(self) -> str:
        return line_item_url(self.line_item, self.registration)


def seed_platform(
    *,
    base_url: str,
    login_url: str,
    launch_url: str,
    jwks_url: str = "",
    deep_linking_url: str = "",
    tool_public_jwks: dict[str, Any] | None = None,
    profile: str = Profile.GENERIC,
    client_id: str | None = None,
    deployment_id: str | None = None,
    custom: dict[str, str] | None = None,
    course_title: str = "Networking Fundamentals",
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    score_maximum: float = 100,
    student_names: tuple[str, ...] = ("Ada Learner", "Ben Learner", "Cleo Learner"),
    name: str = "Courseware tool",
) -> Seeded:
    """A platform at `base_url` (…/sandbox-lms) with one tool registration, one deployment and
    a course ready to launch: an instructor, students and a graded resource link."""
    platform = create_platform(base_url=base_url)
    registration = register_tool(
        platform=platform, name=name, client_id=client_id, login_url=login_url, launch_url=launch_url,
        jwks_url=jwks_url, deep_linking_url=deep_linking_url, profile=profile, tool_public_jwks=tool_public_jwks,
        custom=custom if custom is not None else {
            "course_start_date": "$Canvas.course.startAt" if profile == Profile.CANVAS else "$CourseSection.timeFrame.begin",
            "course_end_date": "$Canvas.course.endAt" if profile == Profile.CANVAS else "$CourseSection.timeFrame.end",
            "context_id_history": "$Context.id.history",
            "resource_link_id_history": "$ResourceLink.id.history",
        },
    )
    deployment = add_deployment(registration=registration, name="Root account", deployment_id=deployment_id)
    now = timezone.now().replace(microsecond=0)
    course = create_course(
        deployment=deployment, title=course_title,
        starts_at=starts_at or now - timedelta(days=14), ends_at=ends_at or now + timedelta(days=90),
    )
    suffix = registration.pk
    instructor = create_user(platform=platform, name="Irene Instructor", email=f"irene.{suffix}@example.edu")
    enrol(course=course, user=instructor, role=Role.INSTRUCTOR)
    students = []
    for student_name in student_names:
        first = student_name.split()[0].lower()
        student = create_user(platform=platform, name=student_name, email=f"{first}.{suffix}@example.edu")
        enrol(course=course, user=student, role=Role.LEARNER)
        students.append(student)
    link = add_resource_link(
        course=course, title="Chapter 1 quiz",
        line_item={"score_maximum": score_maximum, "resource_id": "chapter-1-quiz", "tag": "quiz"},
    )
    return Seeded(platform, registration, deployment, course, instructor, students, link, link.line_items.get())


def start_deep_linking(
    *, user: SandboxUser, course: SandboxCourse, accept_multiple: bool = True, accept_lineitem: bool = True,
    method: str | None = None,
) -> LoginInitiation:
    """"Add activity from tool": the login initiation of an LtiDeepLinkingRequest."""
    return start_launch(
        user=user, course=course, deep_linking=True, accept_multiple=accept_multiple,
        accept_lineitem=accept_lineitem, method=method,
    )


def request_log(*, registration: SandboxRegistration | None = None, kind: str | None = None) -> list[SandboxRequestLog]:
    """The request log, oldest first (this process's batched entries from the fast path written first;
    another server process's within about `fast.LOG_FLUSH_SECONDS`)."""
    fast.flush_log()
    entries = SandboxRequestLog.objects.order_by("id")
    if registration is not None:
        entries = entries.filter(registration=registration)
    if kind:
        entries = entries.filter(kind=kind)
    return list(entries)


class _AutoPostParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = values.get("action") or ""
            self._in_form = True
        elif tag == "input" and self._in_form and values.get("name"):
            self.fields[values["name"]] = values.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def parse_autopost(html: str) -> tuple[str, dict[str, str]]:
    """The action and fields of the first form of an auto-submitting page."""
    parser = _AutoPostParser()
    parser.feed(html)
    if parser.action is None:
        raise ValueError("No form in the page")
    return parser.action, parser.fields


def follow_launch(
    http: requests.Session, initiation: LoginInitiation, *, extra_fields: dict[str, str] | None = None
) -> requests.Response:
    """Do what a browser does: login initiation to the tool, its redirect to the sandbox's auth
    endpoint, then the auto-POST of id_token + state to the tool. Returns the tool's answer
    (or the sandbox's refusal page when the auth request was refused)."""
    if initiation.method == "GET":
        response = http.get(initiation.get_url, timeout=10)
    else:
        response = http.post(initiation.url, data=initiation.params, timeout=10)
    if "lti1p3_new_window" in response.text or "lti1p3-loading-msg" in response.text:
        # pylti1p3's cookie check: its script reloads the login URL with lti1p3_new_window=1.
        response = http.get(initiation.url, params={**initiation.params, "lti1p3_new_window": "1"}, timeout=10)
    if response.status_code != 200 or 'id="autopost"' not in response.text:
        return response
    action, fields = parse_autopost(response.text)
    return http.post(action, data={**fields, **(extra_fields or {})}, timeout=10)
