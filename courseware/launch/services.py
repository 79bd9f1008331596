"""Writes of a verified launch: users, course, membership, resource link, activity binding, Launch."""
from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from lti_tool.models import LtiLaunch, LtiResourceLink
from lti_tool.utils import sync_data_from_launch

from gradesync import api as gradesync_api
from institutions.services import CONTEXT_HISTORY_PARAM, upsert_course_from_launch
from institutions.tool_configuration import INSTRUCTOR_TOOLS_PAGE, TOOL_PAGE_PARAM

from ..models import Activity, ActivityLink, Launch, LaunchRole, Placement
from .refusals import LaunchRefused
from .verification import DEEP_LINKING_REQUEST, DL, RESOURCE_LINK_REQUEST, VerifiedLaunch

AGS_CLAIM = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"
MEMBERSHIP = "http://purl.imsglobal.org/vocab/lis/v2/membership#"
TEST_USER = "http://purl.imsglobal.org/vocab/lti/system/person#TestUser"
INSTRUCTOR_ROLES = {"Instructor", "TeachingAssistant", "ContentDeveloper", "Administrator"}

# Custom parameters: the ones our deep-linking response sets on each link, and course dates.
ACTIVITY_PARAM = "activity_id"
PLACEMENT_PARAM = "placement_id"
START_DATE_PARAM = "course_start_date"
END_DATE_PARAM = "course_end_date"


def role_from_claims(roles: list[str]) -> str:
    """The course role that matters here, from the roles claim.

    Only *context* roles count: the institution role `…/institution/person#Student` makes nobody
    a student of this course. Student view (TestUser) wins over Learner: it never syncs.
    """
    if TEST_USER in roles:
        return LaunchRole.TEST_USER
    names = set()
    for role in roles:
        if not isinstance(role, str):
            continue
        if role.startswith(MEMBERSHIP):
            names.add(role[len(MEMBERSHIP):])
        elif role.startswith("http://purl.imsglobal.org/vocab/lis/v2/membership/Instructor#"):
            names.add(role.rsplit("#", 1)[1])  # sub-roles such as TeachingAssistant
        elif "/" not in role:
            names.add(role)  # deprecated simple names ("Learner", "Instructor")
    if names & INSTRUCTOR_ROLES:
        return LaunchRole.INSTRUCTOR
    if "Learner" in names:
        return LaunchRole.LEARNER
    return LaunchRole.OTHER


INSTRUCTOR_TOOLS_ONLY = (
    "This link is for the course's instructors: it opens grade sync and attempts allowed. "
    "Open your activities from the course instead."
)


def opens_instructor_tools(verified: VerifiedLaunch) -> bool:
    """A resource link placed for the instructor's tools (deep linking or Canvas's course navigation), not an activity."""
    return verified.message_type == RESOURCE_LINK_REQUEST and verified.custom.get(TOOL_PAGE_PARAM) == INSTRUCTOR_TOOLS_PAGE


def _placement_from(custom: dict[str, str]) -> Placement | None:
    placement_id = custom.get(PLACEMENT_PARAM, "")
    if not placement_id.isdigit():
        return None
    return Placement.objects.select_related("activity", "course").filter(pk=int(placement_id)).first()


def _activity_from(custom: dict[str, str], placement: Placement | None) -> Activity | None:
    activity_id = custom.get(ACTIVITY_PARAM, "")
    if activity_id.isdigit():
        activity = Activity.objects.filter(pk=int(activity_id)).first()
        if activity is not None:
            return activity
    return placement.activity if placement else None


def refuse_dead_ends(verified: VerifiedLaunch) -> None:
    """Refuse, before anything is written, a verified launch that leads this user nowhere.

    A deep-linking request or an instructor-tools link from anyone but an instructor, or a learner's
    link that names none of our activities (no activity in its custom parameters, no link bound at an
    earlier launch): the launch is genuine, but a refused launch writes no user, course or Launch.
    """
    role = role_from_claims(verified.claim("roles") or [])
    if verified.message_type == DEEP_LINKING_REQUEST:
        if role != LaunchRole.INSTRUCTOR:
            raise LaunchRefused("Only instructors can add activities to a course.", status=403, return_url=verified.return_url)
        return
    if opens_instructor_tools(verified):
        if role != LaunchRole.INSTRUCTOR:
            raise LaunchRefused(INSTRUCTOR_TOOLS_ONLY, status=403, return_url=verified.return_url)
        return
    if role == LaunchRole.INSTRUCTOR or _activity_from(verified.custom, _placement_from(verified.custom)) is not None:
        return
    bound = ActivityLink.objects.filter(
        resource_link__id_on_platform=str(verified.claim("resource_link")["id"]),
        resource_link__context__id_on_platform=str(verified.claim("context")["id"]),
        resource_link__context__deployment=verified.deployment,
    )
    if not bound.exists():
        raise LaunchRefused(
            "This link is not connected to an activity. Ask your instructor to add it again from the tool.",
            status=404,
            return_url=verified.return_url,
        )


def _bind_activity(
    *, verified: VerifiedLaunch, resource_link: LtiResourceLink, course: object
) -> ActivityLink | None:
    """Bind the resource link to its catalog activity (first launch), and store its line item.

    A link that is not for an activity (none named, none bound earlier) stores no line item, even
    when the LMS names one: Moodle gives a hand-added link a 100-point column we must not grade.
    """
    custom = verified.custom
    placement = _placement_from(custom)
    # A copied course's links keep the custom parameters deep linking gave the source course's links:
    # that placement tells how the link was placed (graded, points) but is the source course's, so the
    # copy's binding does not point at it; another institution's placement tells nothing.
    if placement is not None and placement.course.institution_id != course.institution_id:
        placement = None
    own_placement = placement if placement is not None and placement.course_id == course.pk else None
    activity = _activity_from(custom, placement)
    ags_claim = verified.claims.get(AGS_CLAIM)
    link = ActivityLink.objects.select_related("activity", "placement").filter(resource_link=resource_link).first()
    if activity is None and link is None:
        return None
    # The link is graded when deep linking made it with a line item, or the LMS names one now.
    graded = bool((ags_claim or {}).get("lineitem")) or bool(placement and placement.graded)
    if link is None:
        link = ActivityLink.objects.create(
            resource_link=resource_link, course=course, activity=activity, placement=own_placement, graded=graded
        )
    elif graded and not link.graded:
        link.graded = True
        link.save(update_fields=["graded"])
    points = placement.score_maximum if placement and placement.score_maximum else link.activity.default_points
    gradesync_api.record_launch_endpoints(
        resource_link=resource_link,
        ags_claim=ags_claim,
        label=resource_link.title or link.activity.title,
        score_maximum=Decimal(points),
        resource_id=str(link.activity_id),
    )
    return link


@transaction.atomic
def record_launch(verified: VerifiedLaunch) -> tuple[Launch, ActivityLink | None]:
    """Write what a verified launch tells us and the Launch the session will be bound to."""
    lti_launch = LtiLaunch(verified.message_launch)
    sync_data_from_launch(lti_launch)
    context = lti_launch.context
    context_claim = verified.claim("context") or {}
    custom = verified.custom
    course = upsert_course_from_launch(
        context=context,
        deployment=verified.deployment,
        institution=verified.deployment.ownership.institution,
        title=context_claim.get("title") or context_claim.get("label") or "",
        start_value=custom.get(START_DATE_PARAM),
        end_value=custom.get(END_DATE_PARAM),
        context_history=custom.get(CONTEXT_HISTORY_PARAM),
    )
    role = role_from_claims(verified.claim("roles") or [])
    resource_link = None
    activity_link = None
    if verified.message_type == RESOURCE_LINK_REQUEST:
        resource_link = lti_launch.resource_link
        # The instructor's tools are no activity: no binding, no line item, whatever the custom parameters name.
        if not opens_instructor_tools(verified):
            activity_link = _bind_activity(verified=verified, resource_link=resource_link, course=course)
    launch = Launch.objects.create(
        lti_user=lti_launch.user,
        course=course,
        deployment=verified.deployment,
        resource_link=resource_link,
        role=role,
        roles=verified.claim("roles") or [],
        message_type=verified.message_type,
        deep_linking_settings=verified.claims.get(DL + "deep_linking_settings") or {}
        if verified.message_type == DEEP_LINKING_REQUEST
        else {},
        return_url=verified.return_url[:1000],
    )
    return launch, activity_link
