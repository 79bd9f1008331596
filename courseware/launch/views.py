"""LTI endpoints: OIDC login, launch, and the deep-linking picker. Thin: logic is in services."""
from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_exempt
from lti_tool.views import LtiLaunchBaseView, OIDCLoginInitView

from config.log_format import bind

from ..framing import framed_at_the_door, framed_by_launch, launch_frame_origins
from ..models import Activity, ActivityKind, LaunchRole
from ..services import placed_activities
from ..sessions import bind_session_to_launch, current_launch
from .deep_linking import PickedItem, PickRefused, deep_linking_response, pick_errors
from .login import start_login
from .notices import register_for_copy_notices
from .refusals import LaunchRefused, posted_form
from .services import opens_instructor_tools, record_launch, refuse_dead_ends
from .verification import DEEP_LINKING_REQUEST, verify_launch

logger = logging.getLogger(__name__)


def with_lti_message(return_url: str, *, errormsg: str = "", msg: str = "") -> str:
    """The LMS's return URL with `lti_errormsg` / `lti_msg` added (LTI Core §5.4.4)."""
    parts = urlsplit(return_url)
    query = parse_qsl(parts.query) + [(k, v) for k, v in (("lti_errormsg", errormsg), ("lti_msg", msg)) if v]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def refused(request: HttpRequest, reason: str, *, status: int = 400, return_url: str = "") -> HttpResponse:
    response = render(
        request,
        "courseware/launch/refused.html",
        {"reason": reason, "return_url": with_lti_message(return_url, errormsg=reason) if return_url else ""},
        status=status,
    )
    return response


@method_decorator((csrf_exempt, framed_at_the_door), name="dispatch")
class LoginView(OIDCLoginInitView):
    """OIDC third-party login initiation (GET or POST), for one registration (checks in login.py).

    The browser is always sent back to our own launch URL (the registered redirect URI), never
    to the unsigned `target_link_uri` parameter; where to go next comes from the signed token.
    """

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            form = posted_form(request)
        except LaunchRefused as refusal:
            return refused(request, refusal.reason, status=refusal.status)
        return self.get_oidc_response(request, kwargs.get("registration_uuid"), form)

    def get_oidc_response(self, request, registration_uuid, params):
        try:
            return start_login(request, registration_uuid, params, request.build_absolute_uri(reverse("lti-launch")))
        except LaunchRefused as refusal:
            logger.info("login refused: %s", refusal.reason)
            return refused(request, refusal.reason, status=refusal.status)


@method_decorator((csrf_exempt, framed_at_the_door), name="dispatch")
class LaunchView(LtiLaunchBaseView):
    """The LTI launch: verify everything (verification.py), then write (services.py)."""

    def get(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        return refused(request, "This address receives LTI launches from an LMS; open the activity from your course.", status=405)

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            verified = verify_launch(request)
            refuse_dead_ends(verified)
        except LaunchRefused as refusal:
            logger.info("launch refused: %s", refusal.reason)
            if refusal.return_url:
                return HttpResponseRedirect(with_lti_message(refusal.return_url, errormsg=refusal.reason))
            return refused(request, refusal.reason, status=refusal.status)
        # The launch's institution and registration on the log lines of what it writes and queues (no query:
        # verify_launch selected the deployment's ownership).
        with bind(institution=verified.deployment.ownership.institution_id, registration=verified.deployment.registration_id):
            launch, activity_link = record_launch(verified)
            register_for_copy_notices(request, launch)
        bind_session_to_launch(request, launch, frame_origins=launch_frame_origins(launch, request=request))
        if launch.message_type == DEEP_LINKING_REQUEST:
            return HttpResponseRedirect(reverse("lti-pick"))
        if opens_instructor_tools(verified):
            return HttpResponseRedirect(reverse("courseware:instructor_tools"))
        if activity_link is not None:
            return HttpResponseRedirect(reverse("courseware:play", kwargs={"link_id": activity_link.pk}))
        return HttpResponseRedirect(reverse("courseware:schedule"))  # an instructor's link that is not ours


# The picker's checkbox for the instructor tools (not a catalog activity, so not an "activity" value).
INSTRUCTOR_TOOLS_FIELD = "instructor_tools"
# Placement.score_maximum holds 7 digits, 2 after the point.
MAX_POINTS = Decimal("99999.99")


def _picks_from(post, activities: dict[int, Activity]) -> tuple[list[PickedItem], list[tuple[int | None, str]]]:
    """The instructor's choices, and every problem with them (activity id or None, reason)."""
    picks, errors = [], []
    for raw_id in list(dict.fromkeys(post.getlist("activity")))[: len(activities) + 1]:
        activity = activities.get(int(raw_id)) if raw_id.isdigit() and len(raw_id) < 12 else None
        if activity is None:
            errors.append((None, "One of the chosen activities is not in the catalog any more; reload the page."))
            continue
        graded = post.get(f"graded-{activity.pk}") == "on"
        points = None
        if graded:
            raw = post.get(f"points-{activity.pk}", "").strip()[:20]
            try:
                points = Decimal(raw)
            except InvalidOperation:
                points = None
            if points is None or not points.is_finite() or not (0 < points <= MAX_POINTS) or points != points.quantize(Decimal("0.01")):
                errors.append((activity.pk, f"Points for “{activity.title}” must be a number greater than 0 (at most {MAX_POINTS}, two decimals)."))
                continue
        picks.append(PickedItem(activity=activity, graded=graded, points=points))
    return picks, errors


def _sections(catalog: list[Activity]) -> list[dict]:
    """The catalog by section: each section header with the items that follow it."""
    sections: list[dict] = []
    for activity in catalog:
        if activity.kind == ActivityKind.SECTION_HEADER or not sections:
            sections.append({"header": activity if activity.kind == ActivityKind.SECTION_HEADER else None, "items": []})
            if activity.kind == ActivityKind.SECTION_HEADER:
                continue
        sections[-1]["items"].append(activity)
    return sections


@framed_by_launch
def pick(request: HttpRequest) -> HttpResponse:
    """The deep-linking picker: the catalog by section; the instructor chooses and returns to the LMS.

    Activities already placed in this course are marked; on a refusal every problem is shown at once
    and what was typed (choices, graded, points) is kept.
    """
    launch = current_launch(request)
    if launch is None or launch.message_type != DEEP_LINKING_REQUEST or launch.role != LaunchRole.INSTRUCTOR:
        return refused(request, "Open the activity picker from your LMS course (“Add activity from tool”).", status=403)
    settings = launch.deep_linking_settings
    catalog = list(Activity.objects.filter(is_published=True).order_by("position", "id"))
    errors: list[tuple[int | None, str]] = []
    posted = request.method == "POST"
    instructor_tools = posted and request.POST.get(INSTRUCTOR_TOOLS_FIELD) == "on"
    if posted:
        picks, errors = _picks_from(request.POST, {a.pk: a for a in catalog})
        errors += pick_errors(settings, picks, instructor_tools=instructor_tools)
        if not errors:
            try:
                token = deep_linking_response(
                    launch=launch,
                    registration=launch.deployment.registration,
                    picks=picks,
                    launch_url=request.build_absolute_uri(reverse("lti-launch")),
                    instructor_tools=instructor_tools,
                )
            except PickRefused as refusal:
                errors.append((None, str(refusal)))
            else:
                return render(
                    request,
                    "courseware/launch/deep_link_return.html",
                    {"return_url": settings["deep_link_return_url"], "jwt": token, "count": len(picks) + int(instructor_tools)},
                )
    accept_lineitem = settings.get("accept_lineitem") is not False
    placed = set(placed_activities(course=launch.course).values_list("pk", flat=True))
    errors = list(dict.fromkeys(errors))  # one line per problem
    row_errors = {activity_id: message for activity_id, message in errors if activity_id is not None}
    selected = set(request.POST.getlist("activity")) if posted else set()

    def row(activity: Activity) -> dict:
        key = str(activity.pk)
        return {
            "activity": activity,
            "selected": key in selected,
            "placed": activity.pk in placed,
            # A first visit offers graded at the catalog's points; after a refusal, what the instructor typed.
            "graded": request.POST.get(f"graded-{key}") == "on" if posted else True,
            "points": request.POST.get(f"points-{key}", "")[:20] if posted else f"{activity.default_points.normalize():f}",
            "error": row_errors.get(activity.pk, ""),
        }

    sections = [
        {"header": row(section["header"]) if section["header"] else None, "items": [row(item) for item in section["items"]]}
        for section in _sections(catalog)
    ]
    return render(
        request,
        "courseware/launch/picker.html",
        {
            "launch": launch,
            "sections": sections,
            "errors": [message for _activity_id, message in errors],
            "accept_multiple": settings.get("accept_multiple") is not False,
            "accept_lineitem": accept_lineitem,
            "placed_count": len(placed),
            "instructor_tools_field": INSTRUCTOR_TOOLS_FIELD,
            "instructor_tools_selected": instructor_tools,
        },
        status=400 if errors else 200,
    )
