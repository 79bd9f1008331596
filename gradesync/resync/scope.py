"""Resync scope and previews: which grades a resync covers, in (course, learner, activity) key order, and the
grade the policy picks per key; how many grades a scope, or a change of policy, would send to each LMS (reads only)."""
from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from django.db.models import Exists, F, Max, OuterRef, Q, QuerySet, Subquery, Window
from django.db.models.expressions import OrderBy
from django.db.models.functions import RowNumber
from lti_tool.models import LtiUser

from institutions.models import Course, GradePolicy, Institution, LmsFamily

from ..models import Delivery, DeliveryStatus, ResyncJob, Result

Key = tuple[int, int, str]  # (course id, LTI user id, activity key)


class ResyncRefused(Exception):
    """A resync that may not start now; the message says why, in words for the person who asked.

    `job_id` names the job in the way (one of the same scope already queued or running), so a
    page can link to it.
    """

    def __init__(self, message: str, *, job_id: int | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


@dataclass(frozen=True)
class ResyncScope:
    """Which grades: an institution, narrowed by course, learner, activity, one delivery, a window."""

    institution: Institution
    course: Course | None = None
    lti_user: LtiUser | None = None
    activity_key: str = ""
    delivery: Delivery | None = None
    completed_from: datetime.datetime | None = None
    completed_until: datetime.datetime | None = None
    only_changed: bool = False

    @classmethod
    def of_delivery(cls, delivery: Delivery) -> ResyncScope:
        return cls(
            institution=delivery.institution, course=delivery.course, lti_user=delivery.lti_user,
            activity_key=delivery.activity_key, delivery=delivery,
        )

    @classmethod
    def of_job(cls, job: ResyncJob) -> ResyncScope:
        return cls(
            institution=job.institution, course=job.course, lti_user=job.lti_user, activity_key=job.activity_key,
            delivery=job.delivery, completed_from=job.completed_from, completed_until=job.completed_until,
            only_changed=job.only_changed,
        )

    def __post_init__(self) -> None:
        if self.course is not None and self.course.institution_id != self.institution.pk:
            raise ValueError("The course is not the institution's.")
        if self.completed_from and self.completed_until and self.completed_until <= self.completed_from:
            raise ResyncRefused("The end of the date range must come after its start.")

    def keyed_results(self) -> QuerySet[Result]:
        """Eligible results of the scope, before the completion window."""
        results = Result.objects.filter(is_eligible=True, lti_user__isnull=False)
        if self.course is not None:
            results = results.filter(course=self.course)
        else:
            results = results.filter(course__institution=self.institution)
        if self.lti_user is not None:
            results = results.filter(lti_user=self.lti_user)
        if self.activity_key:
            results = results.filter(activity_key=self.activity_key)
        return results

    def results(self) -> QuerySet[Result]:
        """The eligible results that put a grade in scope (completed within the window, if any)."""
        results = self.keyed_results()
        if self.completed_from is not None:
            results = results.filter(completed_at__gte=self.completed_from)
        if self.completed_until is not None:
            results = results.filter(completed_at__lt=self.completed_until)
        return results

    def describe(self) -> str:
        parts = [str(self.institution)]
        if self.course is not None:
            parts.append(f"course “{self.course}”")
        if self.lti_user is not None:
            parts.append(f"learner {self.lti_user.name or self.lti_user.email or self.lti_user.sub}")
        if self.activity_key:
            parts.append(f"activity {self.activity_key}")
        if self.delivery is not None:
            parts.append(f"delivery #{self.delivery.pk}")
        if self.completed_from or self.completed_until:
            start = self.completed_from.strftime("%Y-%m-%d %H:%M") if self.completed_from else "…"
            end = self.completed_until.strftime("%Y-%m-%d %H:%M") if self.completed_until else "…"
            parts.append(f"completed {start} – {end} UTC")
        if self.only_changed:
            parts.append("only grades that differ from the last sent")
        return ", ".join(parts)


def _after(cursor: Key) -> Q:
    course_id, user_id, key = cursor
    return (
        Q(course_id__gt=course_id)
        | Q(course_id=course_id, lti_user_id__gt=user_id)
        | Q(course_id=course_id, lti_user_id=user_id, activity_key__gt=key)
    )


def _at_least(first: Key) -> Q:
    course_id, user_id, key = first
    return (
        Q(course_id__gt=course_id)
        | Q(course_id=course_id, lti_user_id__gt=user_id)
        | Q(course_id=course_id, lti_user_id=user_id, activity_key__gte=key)
    )


def _at_most(last: Key) -> Q:
    course_id, user_id, key = last
    return (
        Q(course_id__lt=course_id)
        | Q(course_id=course_id, lti_user_id__lt=user_id)
        | Q(course_id=course_id, lti_user_id=user_id, activity_key__lte=key)
    )


KEY_ORDER = ["course_id", "lti_user_id", "activity_key"]


def _keys(scope: ResyncScope, *, after: Key | None, limit: int) -> list[Key]:
    results = scope.results()
    if after is not None:
        results = results.filter(_after(after))
    return [tuple(k) for k in results.order_by(*KEY_ORDER).values_list(*KEY_ORDER).distinct()[:limit]]


def _policy_order(policy: str) -> list[OrderBy]:
    """policy.pick_result's choice as an SQL ordering: the first row is the grade the policy sends."""
    if policy == GradePolicy.MOST_RECENT:
        return [F("completed_at").desc(), F("pk").desc()]
    return [F("score").desc(), F("completed_at").desc(), F("pk").desc()]


def _picked_results(scope: ResyncScope, keys: list[Key], policy: str) -> QuerySet[Result]:
    """The result `policy` sends for each of `keys` (sorted, as `_keys` returns them), chosen in SQL, in key order.

    The policy chooses among every eligible result of a key, window or not; the window only
    decides which keys are in scope.
    """
    results = scope.keyed_results().filter(_at_least(keys[0]), _at_most(keys[-1]))
    if scope.completed_from is not None or scope.completed_until is not None:
        results = results.filter(Exists(scope.results().filter(
            course_id=OuterRef("course_id"), lti_user_id=OuterRef("lti_user_id"), activity_key=OuterRef("activity_key")
        )))
    ranked = results.annotate(
        policy_rank=Window(RowNumber(), partition_by=[F(name) for name in KEY_ORDER], order_by=_policy_order(policy))
    )
    return Result.objects.filter(pk__in=ranked.filter(policy_rank=1).values("pk")).order_by(*KEY_ORDER)


# The score our newest SENT delivery of the result's (course, learner, activity) put in the LMS.
_LAST_SENT_SCORE = Subquery(
    Delivery.objects.filter(
        status=DeliveryStatus.SENT, course_id=OuterRef("course_id"), lti_user_id=OuterRef("lti_user_id"),
        activity_key=OuterRef("activity_key"),
    ).order_by("-id").values("score")[:1]
)


# --- Previews ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LmsCount:
    name: str
    family: str
    grades: int


@dataclass(frozen=True)
class ResyncPreview:
    grades: int
    lmses: list[LmsCount] = field(default_factory=list)


def _iter_key_batches(scope: ResyncScope, size: int = 5000) -> Iterator[list[Key]]:
    after: Key | None = None
    while True:
        keys = _keys(scope, after=after, limit=size)
        if not keys:
            return
        yield keys
        after = keys[-1]


def _lms_of_courses(course_ids: Iterable[int]) -> dict[int, tuple[str, str]]:
    return {
        pk: (name, family or LmsFamily.OTHER)
        for pk, name, family in Course.objects.filter(pk__in=set(course_ids)).values_list(
            "pk", "deployment__registration__name", "deployment__registration__profile__lms_family"
        )
    }


def _changed(scope: ResyncScope, keys: list[Key], policy: str) -> Iterator[tuple[Key, bool]]:
    """For each key: would `policy` put another grade in the LMS than the last one sent? (Never sent: yes.)"""
    batch = set(keys)
    for course_id, user_id, key, score, last_sent in (
        _picked_results(scope, keys, policy).annotate(last_sent=_LAST_SENT_SCORE)
        .values_list(*KEY_ORDER, "score", "last_sent")
    ):
        if (course_id, user_id, key) in batch:
            yield (course_id, user_id, key), last_sent != score


def preview_resync(scope: ResyncScope) -> ResyncPreview:
    """How many grades the job would send, per LMS. Reads in batches; no writes."""
    per_course: dict[int, int] = defaultdict(int)
    policy = scope.institution.grade_policy
    for keys in _iter_key_batches(scope):
        if scope.only_changed:
            keys = [key for key, changed in _changed(scope, keys, policy) if changed]
        for course_id, _user, _key in keys:
            per_course[course_id] += 1
    return _preview_from(per_course)


def _preview_from(per_course: dict[int, int]) -> ResyncPreview:
    per_lms: dict[tuple[str, str], int] = defaultdict(int)
    for course_id, (name, family) in _lms_of_courses(per_course).items():
        per_lms[(name, family)] += per_course[course_id]
    lmses = [LmsCount(name=name, family=LmsFamily(family).label if family in LmsFamily.values else family, grades=n)
             for (name, family), n in sorted(per_lms.items())]
    return ResyncPreview(grades=sum(per_course.values()), lmses=lmses)


@dataclass(frozen=True)
class PolicyPreview:
    policy: str
    grades: int  # (course, learner, activity) with eligible results
    changed: int  # of which the LMS would get another grade under `policy`
    lmses: list[LmsCount] = field(default_factory=list)


def preview_policy_change(*, institution: Institution, policy: str) -> PolicyPreview:
    """For each (course, learner, activity) with eligible results: does `policy` pick another grade than the last sent?

    A grade never sent counts as changed: a resync would put it in the LMS.
    """
    scope = ResyncScope(institution=institution)
    total = 0
    per_course: dict[int, int] = defaultdict(int)
    for keys in _iter_key_batches(scope):
        for key, changed in _changed(scope, keys, policy):
            total += 1
            if changed:
                per_course[key[0]] += 1
    preview = _preview_from(per_course)
    return PolicyPreview(policy=policy, grades=total, changed=preview.grades, lmses=preview.lmses)


# --- Choosing a scope by name (the resync form's autocompletes) --------------------------------
# Learners and activities are offered within one course: the course bounds the rows read, so a
# part of an email or a title can be matched with a plain contains, with no index of its own.


def courses_to_resync(*, institution: Institution, lti_user: LtiUser | None = None) -> QuerySet[Course]:
    """The institution's courses (only the learner's, when one is chosen); never another institution's."""
    courses = Course.objects.filter(institution=institution).select_related("context")
    if lti_user is not None:
        courses = courses.filter(Exists(Result.objects.filter(course=OuterRef("pk"), lti_user=lti_user)))
    return courses


def learners_to_resync(*, course: Course, term: str = "") -> QuerySet[LtiUser]:
    """The course's learners (anyone with a result in it) whose name, email or LMS user id contains `term`."""
    learners = LtiUser.objects.filter(pk__in=Result.objects.filter(course=course, lti_user__isnull=False).values("lti_user_id"))
    term = term.strip()
    if term:
        learners = learners.filter(Q(name__icontains=term) | Q(email__icontains=term) | Q(sub__icontains=term))
    return learners.order_by("name", "email", "pk")


def activities_to_resync(*, course: Course, term: str = "") -> QuerySet:
    """The course's activities (catalog ids with their titles, as results reported them) whose title or id contains `term`.

    Rows of `activity_key` and `title`, by title.
    """
    results = Result.objects.filter(course=course)
    term = term.strip()
    if term:
        results = results.filter(Q(activity_title__icontains=term) | Q(activity_key__icontains=term))
    return results.values("activity_key").annotate(title=Max("activity_title")).order_by("title", "activity_key")


def activity_title(*, course: Course | None, activity_key: str) -> str:
    """The title results reported for `activity_key` (in `course` when given), or the key itself."""
    results = Result.objects.filter(activity_key=activity_key).exclude(activity_title="")
    if course is not None:
        results = results.filter(course=course)
    return results.values_list("activity_title", flat=True).first() or activity_key
