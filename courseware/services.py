"""The learner's side: attempts, presence on timed pages, scoring, attempt limits.

Every write is a typed, keyword-only function here; views only translate HTTP to these calls.

Who is playing is a `Player`: the LTI launch the session is bound to, or a direct (Django) login.
An attempt belongs to the course of the link that was opened; it is *eligible* for that course
only when a learner launched from that very course. Every finished attempt, eligible or not, is
handed to grade sync through `gradesync.api.record_result` in the attempt's transaction: grade
sync keeps the ledger and applies its own rules (course dates, graded link, deployment).
"""
from __future__ import annotations

import datetime
import logging
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Mapping

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from lti_tool.models import LtiUser

from gradesync import api as gradesync_api
from institutions.models import Course

from .models import (
    LIMITED_KINDS,
    QUESTION_KINDS,
    TIMED_KINDS,
    Activity,
    ActivityLink,
    Attempt,
    AttemptAllowance,
    Launch,
    LaunchRole,
    Placement,
)

logger = logging.getLogger(__name__)

# Timed pages (readings, videos): credit after this much continuous presence, measured here.
REQUIRED_PRESENCE_SECONDS = 60
# A longer silence between two pings means the learner left: the clock starts again.
MAX_PING_GAP_SECONDS = 30
# How often the page pings (shown to the page; the server never trusts it).
PING_INTERVAL_SECONDS = 10

SCORE_PLACES = Decimal("0.00001")


def required_presence() -> datetime.timedelta:
    return datetime.timedelta(seconds=REQUIRED_PRESENCE_SECONDS)


def max_ping_gap() -> datetime.timedelta:
    return datetime.timedelta(seconds=MAX_PING_GAP_SECONDS)


class AttemptRefused(Exception):
    """The learner may not start or submit this attempt; the message says why, in plain words."""


class ScheduleRefused(Exception):
    """An attempts-allowed change that cannot be made; the message says why."""


# --- Who is playing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Player:
    """The person behind a request: an LTI launch, or a direct login (`launch` is None)."""

    launch: Launch | None
    auth_user: Any = None

    @property
    def lti_user(self) -> LtiUser | None:
        return self.launch.lti_user if self.launch else None

    @property
    def is_instructor(self) -> bool:
        return self.launch is not None and self.launch.role == LaunchRole.INSTRUCTOR

    def attempts(self) -> QuerySet[Attempt]:
        """This person's attempts (all activities), in the courses their launch's institution owns."""
        if self.launch is not None:
            return Attempt.objects.filter(
                lti_user=self.launch.lti_user, course__institution_id=self.launch.course.institution_id
            )
        return Attempt.objects.filter(auth_user=self.auth_user, lti_user__isnull=True)

    def links(self) -> QuerySet[ActivityLink]:
        """The activity links this person may open: a launch's, its own institution's only (the tenant wall).

        Another course of the same institution plays, recorded ineligible (eligibility_for says why);
        staff logged in directly open any link (never synced).
        """
        links = ActivityLink.objects.select_related("activity__section", "course", "resource_link")
        if self.launch is not None:
            return links.filter(course__institution_id=self.launch.course.institution_id)
        return links


def player_for(*, launch: Launch | None, user: Any) -> Player | None:
    """The player of a request, or None when it may not play (no launch and no staff login)."""
    if launch is not None:
        return Player(launch=launch)
    if user is not None and user.is_authenticated and user.is_active and user.is_staff:
        return Player(launch=None, auth_user=user)
    return None


def eligibility_for(*, player: Player, course: Course) -> tuple[bool, str]:
    """Whether this player's attempts count for `course`, and if not, why (in plain words).

    Courseware judges what the launch says; grade sync adds its own rules when it records the result.
    """
    launch = player.launch
    if launch is None:
        return False, "No LTI launch from this course: the session was started by a direct login."
    if launch.course_id != course.pk:
        return False, f"The session was launched from another course ({launch.course}), not this one."
    if launch.role == LaunchRole.TEST_USER:
        return False, "Student view (test user): never synced."
    if launch.role != LaunchRole.LEARNER:
        return False, "Only learners' results are synced."
    return True, ""


def launch_facts(launch: Launch | None) -> gradesync_api.LaunchFacts:
    if launch is None:
        return gradesync_api.NO_LAUNCH
    return gradesync_api.LaunchFacts(role=launch.role, course=launch.course, deployment=launch.deployment)


# --- Attempt limits ---------------------------------------------------------------------------


def attempts_allowed_for(*, course: Course, activity: Activity) -> int | None:
    """Attempts a learner has at `activity` in `course` (None = unlimited)."""
    if activity.kind not in LIMITED_KINDS:
        return None
    allowance = AttemptAllowance.objects.filter(course=course, activity=activity).first()
    if allowance is not None:
        return allowance.attempts_allowed
    return activity.default_attempts_allowed


def _attempts_of(*, player: Player, course: Course, activity: Activity) -> QuerySet[Attempt]:
    return player.attempts().filter(course=course, activity=activity)


def attempts_used(*, player: Player, course: Course, activity: Activity) -> int:
    """Finished attempts: the ones that count against the limit."""
    return _attempts_of(player=player, course=course, activity=activity).filter(completed_at__isnull=False).count()


def limit_message(*, allowed: int, activity: Activity) -> str:
    noun = activity.get_kind_display().lower()
    if allowed == 1:
        return f"You have used your 1 allowed attempt for this {noun}. Ask your instructor if you need another."
    return f"You have used all {allowed} allowed attempts for this {noun}. Ask your instructor if you need another."


def refusal_to_start(*, player: Player, course: Course, activity: Activity) -> str:
    """Why a new attempt may not start now ("" when it may). Instructors preview without limits."""
    if player.is_instructor:
        return ""
    allowed = attempts_allowed_for(course=course, activity=activity)
    if allowed is not None and attempts_used(player=player, course=course, activity=activity) >= allowed:
        return limit_message(allowed=allowed, activity=activity)
    return ""


# --- Attempts ---------------------------------------------------------------------------------


def open_attempt(*, player: Player, link: ActivityLink) -> Attempt | None:
    return (
        _attempts_of(player=player, course=link.course, activity=link.activity)
        .filter(completed_at__isnull=True)
        .order_by("-number")
        .first()
    )


def _lock_player(player: Player) -> None:
    """Serialize one person's attempt writes (two tabs, double clicks) on their own user row."""
    if player.launch is not None:
        LtiUser.objects.select_for_update().filter(pk=player.launch.lti_user_id).first()
    else:
        get_user_model().objects.select_for_update().filter(pk=player.auth_user.pk).first()


@transaction.atomic
def start_attempt(*, player: Player, link: ActivityLink, now: datetime.datetime | None = None) -> Attempt:
    """Continue the player's open attempt at the link's activity, or start the next one.

    Raises AttemptRefused when the attempts allowed are used up, or for a section header.
    A timed page's open attempt counts this call as presence (the page was just opened).
    """
    now = now or timezone.now()
    activity = link.activity
    if not activity.is_gradable:
        raise AttemptRefused("A section header has nothing to attempt.")
    _lock_player(player)
    attempt = open_attempt(player=player, link=link)
    if attempt is not None:
        _adopt_launch(attempt=attempt, player=player)
        if activity.kind in TIMED_KINDS:
            _note_presence(attempt=attempt, now=now)
        return attempt
    refusal = refusal_to_start(player=player, course=link.course, activity=activity)
    if refusal:
        raise AttemptRefused(refusal)
    eligible, reason = eligibility_for(player=player, course=link.course)
    previous = _attempts_of(player=player, course=link.course, activity=activity).order_by("-number").first()
    attempt = Attempt.objects.create(
        activity=activity,
        course=link.course,
        activity_link=link,
        lti_user=player.lti_user,
        auth_user=player.auth_user if player.launch is None else None,
        launch=player.launch,
        number=(previous.number + 1) if previous else 1,
        started_at=now,
        last_seen_at=now,
        answers={"present_since": now.isoformat()} if activity.kind in TIMED_KINDS else {},
        eligible=eligible,
        ineligible_reason=reason,
    )
    logger.info("attempt %s started: %s #%s in course %s", attempt.pk, activity.slug, attempt.number, link.course_id)
    return attempt


def _adopt_launch(*, attempt: Attempt, player: Player) -> None:
    """An open attempt continued (or finished) under a newer launch of the same person counts as that launch's.

    E.g. a quiz opened from another course's session, then launched properly from this course:
    the launch it is finished under is the one that decides its eligibility.
    """
    if player.launch is None or attempt.launch_id == player.launch.pk:
        return
    attempt.launch = player.launch
    attempt.eligible, attempt.ineligible_reason = eligibility_for(player=player, course=attempt.course)
    attempt.save(update_fields=["launch", "eligible", "ineligible_reason"])


def earned_timed_credit(*, player: Player, link: ActivityLink) -> Attempt | None:
    """The finished attempt that already gave this reading or video its credit, if any.

    A timed page gives its 1/1 once: opening it again does not time it again, unless the
    earlier credit was not eligible and this session's would be (e.g. previewed, then launched).
    """
    eligible, _reason = eligibility_for(player=player, course=link.course)
    done = _attempts_of(player=player, course=link.course, activity=link.activity).filter(completed_at__isnull=False)
    if eligible:
        done = done.filter(eligible=True)
    return done.order_by("-completed_at").first()


def _note_presence(*, attempt: Attempt, now: datetime.datetime) -> None:
    last_seen = attempt.last_seen_at or attempt.started_at
    since = attempt.answers.get("present_since")
    if since is None or now - last_seen > max_ping_gap():
        # Left the page (or never pinged): continuous presence starts again now.
        restarts = attempt.answers.get("restarts", 0) + (1 if since is not None else 0)
        attempt.answers = {**attempt.answers, "present_since": now.isoformat(), "restarts": restarts}
    attempt.last_seen_at = max(now, last_seen)
    attempt.save(update_fields=["answers", "last_seen_at"])


def presence_seconds(*, attempt: Attempt) -> int:
    """Seconds of continuous presence the server has seen on this attempt's page so far."""
    if attempt.completed_at is not None:
        return int(required_presence().total_seconds())
    since = attempt.answers.get("present_since")
    if not since:
        return 0
    last_seen = attempt.last_seen_at or attempt.started_at
    return max(0, int((last_seen - datetime.datetime.fromisoformat(since)).total_seconds()))


@dataclass(frozen=True)
class Presence:
    attempt: Attempt
    seconds: int
    completed: bool


@transaction.atomic
def record_presence(
    *, attempt_id: int, player: Player, link: ActivityLink, now: datetime.datetime | None = None
) -> Presence:
    """A ping from a reading or video page: the learner is still there.

    Completes the attempt with 1/1 once the server has seen `REQUIRED_PRESENCE_SECONDS` of
    presence without a gap longer than `MAX_PING_GAP_SECONDS`. Raises Attempt.DoesNotExist when
    the attempt is not this player's timed attempt at the link's activity and course.
    """
    now = now or timezone.now()
    _lock_player(player)
    attempt = (
        _attempts_of(player=player, course=link.course, activity=link.activity)
        .select_related("activity", "course", "activity_link__resource_link", "launch__course", "launch__deployment")
        .get(pk=attempt_id, activity__kind__in=TIMED_KINDS)
    )
    if attempt.completed_at is not None:
        return Presence(attempt=attempt, seconds=presence_seconds(attempt=attempt), completed=True)
    _adopt_launch(attempt=attempt, player=player)
    _note_presence(attempt=attempt, now=now)
    seconds = presence_seconds(attempt=attempt)
    if seconds >= required_presence().total_seconds():
        _finish(attempt=attempt, score=Decimal(1), now=now)
        return Presence(attempt=attempt, seconds=seconds, completed=True)
    return Presence(attempt=attempt, seconds=seconds, completed=False)


def normalize_free_answer(value: str) -> str:
    """Labs accept answers regardless of case and spacing: "  IPConfig   /ALL " == "ipconfig /all"."""
    return re.sub(r"\s+", " ", str(value)).strip().casefold()


def is_correct(*, choices: list, answer: Any, given: str) -> bool:
    """Multiple choice: `answer` is the right index. Free answer: `answer` lists accepted answers."""
    if choices:
        return given.strip().isdigit() and int(given) == int(answer)
    accepted = answer if isinstance(answer, list) else [answer]
    return normalize_free_answer(given) in {normalize_free_answer(a) for a in accepted}


@transaction.atomic
def submit_answers(
    *,
    attempt_id: int,
    player: Player,
    link: ActivityLink,
    answers: Mapping[str, str],
    now: datetime.datetime | None = None,
) -> Attempt:
    """Score the player's open attempt at a quiz, assessment, practice test or lab, and finish it.

    `answers` maps a question's id (as a string) to the answer given (a choice's index, or the
    text typed). Unanswered questions are wrong. The score is the fraction answered correctly.
    Raises Attempt.DoesNotExist when the attempt is not this player's at the link's activity and
    course, AttemptRefused when it is already finished (a second submit of the same page).
    """
    now = now or timezone.now()
    _lock_player(player)
    attempt = (
        _attempts_of(player=player, course=link.course, activity=link.activity)
        .select_related("activity", "course", "activity_link__resource_link", "launch__course", "launch__deployment")
        .get(pk=attempt_id, activity__kind__in=QUESTION_KINDS)
    )
    if attempt.completed_at is not None:
        raise AttemptRefused("This attempt was already submitted; its result is below.")
    _adopt_launch(attempt=attempt, player=player)
    questions = list(attempt.activity.questions.all())
    if not questions:
        raise AttemptRefused("This activity has no questions yet.")
    marked = {}
    for question in questions:
        given = str(answers.get(str(question.pk), "") or "")[:500]
        marked[str(question.pk)] = {
            "given": given,
            "correct": is_correct(choices=question.choices, answer=question.answer, given=given),
        }
    correct = sum(1 for mark in marked.values() if mark["correct"])
    attempt.answers = marked
    score = (Decimal(correct) / Decimal(len(questions))).quantize(SCORE_PLACES, rounding=ROUND_HALF_UP)
    _finish(attempt=attempt, score=score, now=now)
    return attempt


def attempt_source_ref(attempt: Attempt) -> str:
    """The name grade sync knows a finished attempt's result by."""
    return f"courseware-attempt-{attempt.pk}"


def attempt_sync_status(*, attempt: Attempt) -> gradesync_api.ResultSync:
    """Whether the attempt's grade reached the LMS gradebook (sent / pending / not eligible and why), for its result page."""
    return gradesync_api.result_sync_status(source_ref=attempt_source_ref(attempt))


def _finish(*, attempt: Attempt, score: Decimal, now: datetime.datetime) -> None:
    """Complete the attempt and hand its result to grade sync, in the caller's transaction."""
    attempt.score = score
    attempt.completed_at = now
    attempt.last_seen_at = max(now, attempt.last_seen_at or now)
    attempt.save(update_fields=["score", "completed_at", "last_seen_at", "answers"])
    link = attempt.activity_link
    gradesync_api.record_result(
        source_ref=attempt_source_ref(attempt),
        lti_user=attempt.lti_user,
        course=attempt.course,
        activity_key=str(attempt.activity_id),
        activity_title=attempt.activity.title,
        resource_link=link.resource_link if link else None,
        score=score,
        completed_at=now,
        launch=launch_facts(attempt.launch),
        link_graded=True if link and link.graded else None,
    )
    logger.info("attempt %s finished: score %s, eligible %s", attempt.pk, score, attempt.eligible)


# --- Scheduling (instructors) -----------------------------------------------------------------


def placed_activities(*, course: Course) -> QuerySet[Activity]:
    """The activities placed in the course by deep linking, or linked to it (e.g. by a course copy)."""
    return Activity.objects.filter(
        Q(pk__in=Placement.objects.filter(course=course).values("activity"))
        | Q(pk__in=ActivityLink.objects.filter(course=course).values("activity"))
    ).order_by("position", "id")


def schedulable_activities(*, course: Course) -> QuerySet[Activity]:
    """The course's activities whose attempts its instructors may limit."""
    return placed_activities(course=course).filter(kind__in=LIMITED_KINDS)


def parse_attempts_allowed(value: str) -> int | None:
    """A positive whole number, or empty for unlimited. Raises ScheduleRefused otherwise."""
    value = (value or "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ScheduleRefused(f"“{value}” is not a number of attempts: enter a whole number of 1 or more, or leave it empty for unlimited.")
    if int(value) > 1000:
        raise ScheduleRefused("Enter at most 1000 attempts, or leave it empty for unlimited.")
    return int(value)


@transaction.atomic
def set_attempts_allowed(
    *, launch: Launch, activity: Activity, attempts_allowed: int | None
) -> AttemptAllowance:
    """The instructor of `launch` sets the attempts allowed for an activity of their own course.

    Only instructors, only custom quizzes and competency assessments placed in the launch's course.
    Raises ScheduleRefused otherwise; Activity.DoesNotExist when the activity is not in the course.
    """
    if launch.role != LaunchRole.INSTRUCTOR:
        raise ScheduleRefused("Only the course's instructors can change attempts allowed.")
    course = launch.course
    if activity.kind not in LIMITED_KINDS:
        raise ScheduleRefused(
            f"“{activity.title}” is a {activity.get_kind_display().lower()}: only custom quizzes and "
            "competency assessments have a limit on attempts; all other activities allow unlimited attempts."
        )
    if not placed_activities(course=course).filter(pk=activity.pk).exists():
        raise Activity.DoesNotExist(f"Activity {activity.pk} is not placed in course {course.pk}.")
    if attempts_allowed is not None and attempts_allowed < 1:
        raise ScheduleRefused("At least 1 attempt must be allowed (or leave it empty for unlimited).")
    allowance, _created = AttemptAllowance.objects.update_or_create(
        course=course,
        activity=activity,
        defaults={"attempts_allowed": attempts_allowed, "set_by": launch.lti_user},
    )
    logger.info(
        "attempts allowed for %s in course %s set to %s by %s",
        activity.slug, course.pk, attempts_allowed if attempts_allowed is not None else "unlimited", launch.lti_user_id,
    )
    return allowance


def describe_allowed(allowed: int | None) -> str:
    if allowed is None:
        return "Unlimited"
    return "1 attempt" if allowed == 1 else f"{allowed} attempts"

