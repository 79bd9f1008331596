""""Why didn't this grade sync?" for one (learner, activity, course), in words support can act on.

`diagnose(...)` reads only grade sync's own tables (the result ledger, the delivery outbox and
its exchanges, sync warnings) plus the tenant rows they point at, in a fixed number of queries.
It returns every eligibility rule with the fact behind it, the attempts and the one the policy
picks, every exchange with the LMS, and the next steps. `find(...)` is the search box behind it,
`learners_matching(...)` the learner search every admin page shares, and `learner_grades(...)`
a learner's (course, activity) pairs for their admin page.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field, replace

from django.conf import settings
from django.db.models import Count, Max, Q, QuerySet
from django.utils import timezone
from lti_tool.models import LtiLineItem, LtiUser

from institutions.local_time import local_text
from institutions.models import Course, GradePolicy, LmsFamily

from .display import points_text, score_text
from .eligibility import ROLE_WORDS, RuleCheck, check_result
from .models import OPEN_STATUSES, Delivery, DeliveryExchange, DeliveryStatus, Result, SyncWarning
from .outcomes import classify
from .policy import pick_result

MAX_EXCHANGES = 200
MAX_SEARCH_ROWS = 50
NAME_SEARCH_MIN = 3  # a trigram index needs three characters; shorter terms match ids and emails only
MAX_LEARNER_GRADES = 200
MAX_LEARNER_DELIVERIES = 2000
CANVAS_NOT_LINKED = "not linked to a tool associated with this context"

# The next step for each failed rule. Eligibility is decided when an attempt is recorded and a
# resync resends only eligible results, so for most rules the fix is the cause plus a new attempt.
RULE_STEPS: dict[str, str] = {
    "learner": "Only a student's own attempts sync. The attempt was made as {role}: the student must launch "
    "the activity from the LMS course as a student and take it there (instructors and Student View never sync).",
    "launched_from_course": "The attempt did not start from a launch in this course (a direct login, or a launch "
    "from another course). Ask the student to open the activity from this course's link in the LMS and take it there.",
    "within_course_dates": "The attempt was completed outside the course's dates. If the dates are wrong, correct "
    "them on the course (Support) or in the LMS; attempts completed after that sync.",
    "graded_link": "The link was added to the course ungraded. Have the instructor add the activity again as "
    "Graded through deep linking (or bind it to an assignment in the LMS and launch it once); later attempts sync.",
    "line_item_bound": "No LMS assignment (line item) is bound to the link and the LMS gave no line items service. "
    "Have the instructor make the link graded in the LMS and launch it once: the line item binds at launch.",
    "deployment_accepts": "{fact} The integration team activates the deployment and assigns it to an active "
    "institution; attempts after that sync.",
    "one_line_item": "{fact}",
    "deployment_scope": "The course is launched under another deployment than its links were made under: it "
    "probably moved to another sub-account. Deploy the tool where the course now is (integration team), have the "
    "instructor launch once, then resync this grade.",
}


@dataclass(frozen=True)
class Rule:
    """One rule as support reads it: passed or failed, the fact behind it, and the next step when failed."""

    rule: str
    title: str
    passed: bool
    fact: str
    step: str = ""


@dataclass(frozen=True)
class AttemptRow:
    result: Result
    picked: bool
    maximum: float | None = None  # the LMS's points for the attempt's line item, when one is known

    @property
    def score(self) -> str:
        return score_text(self.result.score, self.maximum)


@dataclass(frozen=True)
class DeliveryRow:
    delivery: Delivery
    advice: str
    overdue: bool = False  # due (or claimed) long ago and still not done: nothing is working the outbox
    latest: bool = False

    @property
    def score(self) -> str:
        return score_text(self.delivery.score, _maximum_of(self.delivery))


@dataclass(frozen=True)
class ExchangeRow:
    exchange: DeliveryExchange
    delivery_id: int

    @property
    def score(self) -> str:
        return points_text(self.exchange.score_given, self.exchange.score_maximum)


@dataclass(frozen=True)
class Diagnosis:
    lti_user: LtiUser
    course: Course
    activity_key: str
    activity_title: str
    lms_family: str
    policy: str
    rules_of: Result | None  # the attempt whose facts the rules show
    rules: list[Rule]
    attempts: list[AttemptRow]
    picked: Result | None
    deliveries: list[DeliveryRow]
    exchanges: list[ExchangeRow]
    verdict: str
    next_steps: list[str] = field(default_factory=list)
    more_exchanges: bool = False

    @property
    def policy_label(self) -> str:
        return GradePolicy(self.policy).label if self.policy in GradePolicy.values else self.policy

    @property
    def failed_rules(self) -> list[Rule]:
        return [rule for rule in self.rules if not rule.passed]

    @property
    def latest_delivery(self) -> Delivery | None:
        return self.deliveries[0].delivery if self.deliveries else None

    @property
    def overdue(self) -> bool:
        return any(row.overdue for row in self.deliveries)


def _maximum_of(delivery: Delivery) -> float | None:
    return delivery.line_item.maximum_score if delivery.line_item_id and delivery.line_item else None


def overdue_after() -> datetime.timedelta:
    """How long past its next try an open delivery may wait before it is "overdue".

    A worker takes a due row within seconds; beat's sweeper re-queues a lost pending row after
    GRADE_DELIVERY_REQUEUE_AFTER_SECONDS and a retrying one at its first sweep after it is due.
    Past both (and two sweeps), nothing is working the outbox: no worker, or no beat.
    """
    return datetime.timedelta(
        seconds=settings.GRADE_DELIVERY_REQUEUE_AFTER_SECONDS + 2 * settings.GRADE_SWEEP_INTERVAL_SECONDS
    )


def is_overdue(delivery: Delivery, now: datetime.datetime) -> bool:
    """Open, and its next try (or, while sending, its claim) long past: see overdue_after."""
    if delivery.status in (DeliveryStatus.PENDING, DeliveryStatus.RETRYING):
        return delivery.next_attempt_at is not None and delivery.next_attempt_at < now - overdue_after()
    if delivery.status == DeliveryStatus.SENDING:
        stale = datetime.timedelta(seconds=settings.GRADE_DELIVERY_STALE_CLAIM_SECONDS) + overdue_after()
        return delivery.claimed_at is not None and delivery.claimed_at < now - stale
    return False


def _minutes_ago(when: datetime.datetime, now: datetime.datetime) -> str:
    minutes = int((now - when).total_seconds() // 60)
    return "less than a minute ago" if minutes < 1 else f"{minutes} minute{'s' if minutes != 1 else ''} ago"


def _who(user: LtiUser) -> str:
    return user.name or user.email or user.sub


def _scope_rule(course: Course, rules_of: Result | None, deliveries: list[Delivery]) -> Rule:
    """Did the course leave the deployment its links were made under? Facts: the launch's deployment,
    the course's, the deliveries', and Canvas's 401 "not linked" refusals."""
    linked = course.deployment
    problems = []
    if rules_of is not None and rules_of.launch_deployment_id and rules_of.launch_deployment_id != linked.pk:
        launched = rules_of.launch_deployment
        problems.append(
            f"the attempt was launched under deployment {launched.deployment_id if launched else rules_of.launch_deployment_id}, "
            f"but the course's links were made under {linked.deployment_id}"
        )
    other = sorted({d.deployment.deployment_id for d in deliveries if d.deployment_id != linked.pk})
    if other:
        problems.append(f"grades were sent under deployment {', '.join(other)}, not {linked.deployment_id}")
    refusals = [
        d for d in deliveries
        if d.last_status_code == 401 and CANVAS_NOT_LINKED in (d.last_message or "").lower()
    ]
    if refusals:
        problems.append(f"the LMS answered 401 “not linked to a tool associated with this context” (delivery #{refusals[0].pk})")
    if problems:
        fact = "Moved out of scope? " + "; ".join(problems) + "."
        return Rule("deployment_scope", "The course is still in its deployment's scope", False, fact, RULE_STEPS["deployment_scope"])
    fact = f"Launched and sent under deployment {linked.deployment_id}, the one the course's links were made under."
    if rules_of is not None and not rules_of.launch_deployment_id:
        fact = f"The course's links were made under deployment {linked.deployment_id}; the attempt had no launch to compare."
    return Rule("deployment_scope", "The course is still in its deployment's scope", True, fact)


def _line_item_rule(warnings: list[SyncWarning], line_items: list[LtiLineItem]) -> Rule:
    duplicate = next((w for w in warnings if w.kind == "duplicate_line_items"), None)
    if duplicate is not None:
        return Rule("one_line_item", "One LMS assignment for this activity", False, duplicate.message, duplicate.message)
    if len({item.url for item in line_items}) > 1:
        fact = f"{len(line_items)} LMS line items in this course point at this activity: " + ", ".join(i.label for i in line_items) + "."
        return Rule("one_line_item", "One LMS assignment for this activity", False, fact,
                    fact + " Grades go to the one bound to the launched link; remove the extra column in the LMS.")
    fact = "One line item for this activity." if line_items else "No line item for this activity yet."
    return Rule("one_line_item", "One LMS assignment for this activity", True, fact)


def _rule(check: RuleCheck, role: str) -> Rule:
    step = "" if check.passed else RULE_STEPS.get(check.rule, "").format(role=ROLE_WORDS.get(role, role), fact=check.fact)
    return Rule(check.rule, check.title, check.passed, check.fact, step)


def delivery_advice(delivery: Delivery, lms_family: str, last_exchange: DeliveryExchange | None,
                    now: datetime.datetime | None = None) -> str:
    """The next step for one delivery, in plain words; the LMS's own refusal advice from `outcomes`."""
    now = now or timezone.now()
    score = score_text(delivery.score, _maximum_of(delivery))
    if delivery.status == DeliveryStatus.SENT:
        return f"Nothing to do: the LMS accepted {score} at {local_text(delivery.sent_at)}."
    if is_overdue(delivery, now):
        if delivery.status == DeliveryStatus.SENDING:
            return (f"Overdue: a worker took it at {local_text(delivery.claimed_at)} ({_minutes_ago(delivery.claimed_at, now)}) "
                    "and never finished, and nothing has reclaimed it: no worker or beat running? Start the grade "
                    "workers and beat (Sync health shows the outbox); it is sent again once they run.")
        return (f"Overdue: its next try was due at {local_text(delivery.next_attempt_at)} "
                f"({_minutes_ago(delivery.next_attempt_at, now)}) and nothing has picked it up: no worker or beat "
                "running? Start the grade workers and beat (Sync health shows the outbox); it is sent once they run.")
    if delivery.status in (DeliveryStatus.PENDING, DeliveryStatus.SENDING):
        return "Queued: it is sent within seconds. If it waits for minutes, check that the grade workers run (Sync health)."
    code = delivery.last_status_code
    body = last_exchange.message if last_exchange is not None else delivery.last_message
    advice = classify(lms_family, code, body or "").advice if code is not None else ""
    if delivery.status == DeliveryStatus.RETRYING:
        when = local_text(delivery.next_attempt_at) if delivery.next_attempt_at else "soon"
        return f"{advice or 'The LMS did not take it yet; it is retried automatically.'} Next try: {when}."
    if delivery.status == DeliveryStatus.DEAD:
        return ("Gave up after repeated failures. Fix the cause the last message names (the LMS's availability, "
                "our key or client id in the LMS), then resync this grade.")
    # Refused: the classification's advice, which our own message begins with when it came from the LMS.
    return advice or delivery.last_message or "The LMS refused the grade; read its message, fix the cause, then resync."


def diagnose(*, lti_user: LtiUser, course: Course, activity_key: str) -> Diagnosis:
    """Every fact support needs about one grade, and what to do next."""
    course = (
        Course.objects.select_related("context", "institution", "deployment__ownership__institution", "deployment__registration__profile")
        .get(pk=course.pk)
    )
    profile = getattr(course.deployment.registration, "profile", None)
    lms_family = profile.lms_family if profile else LmsFamily.OTHER
    policy = course.institution.grade_policy
    results = list(
        Result.objects.filter(course=course, lti_user=lti_user, activity_key=activity_key)
        .select_related("launched_course__context", "launch_deployment", "resource_link")
        .order_by("-completed_at", "-id")
    )
    deliveries = list(
        Delivery.objects.filter(course=course, lti_user=lti_user, activity_key=activity_key)
        .select_related("deployment", "line_item")
        .order_by("-id")
    )
    exchanges = list(
        DeliveryExchange.objects.filter(delivery__in=[d.pk for d in deliveries]).order_by("-attempted_at", "-id")[: MAX_EXCHANGES + 1]
    )
    more_exchanges = len(exchanges) > MAX_EXCHANGES
    exchanges = exchanges[:MAX_EXCHANGES]
    warnings = list(SyncWarning.objects.filter(course=course, activity_key=activity_key))
    link_ids = {r.resource_link_id for r in results if r.resource_link_id} | {d.resource_link_id for d in deliveries if d.resource_link_id}
    line_items = list(
        LtiLineItem.objects.filter(context_id=course.context_id)
        .filter(Q(resource_link_id__in=link_ids) | Q(resource_id=activity_key))
        .order_by("-id")
    )

    picked = pick_result(results, policy)
    rules_of = picked or (results[0] if results else None)
    rules: list[Rule] = []
    if rules_of is not None:
        bound = next((i for i in line_items if rules_of.resource_link_id and i.resource_link_id == rules_of.resource_link_id), None)
        rules = [_rule(check, rules_of.launch_role) for check in check_result(rules_of, course=course, line_item=bound)]
    rules.append(_line_item_rule(warnings, line_items))
    rules.append(_scope_rule(course, rules_of, deliveries))

    last_exchange: dict[int, DeliveryExchange] = {}
    for exchange in exchanges:
        last_exchange.setdefault(exchange.delivery_id, exchange)
    now = timezone.now()
    delivery_rows = [
        DeliveryRow(d, delivery_advice(d, lms_family, last_exchange.get(d.pk), now), is_overdue(d, now), index == 0)
        for index, d in enumerate(deliveries)
    ]

    def maximum_for(result: Result) -> float | None:
        bound = next((i for i in line_items if result.resource_link_id and i.resource_link_id == result.resource_link_id), None)
        bound = bound or next((i for i in line_items if i.resource_id == activity_key), None)
        return bound.maximum_score if bound is not None else None

    verdict, steps, delivery_rows = _verdict(results, picked, delivery_rows, rules, maximum_for)
    return Diagnosis(
        lti_user=lti_user,
        course=course,
        activity_key=activity_key,
        activity_title=next((r.activity_title for r in results if r.activity_title), "") or activity_key,
        lms_family=lms_family,
        policy=policy,
        rules_of=rules_of,
        rules=rules,
        attempts=[AttemptRow(r, picked is not None and r.pk == picked.pk, maximum_for(r)) for r in results],
        picked=picked,
        deliveries=delivery_rows,
        exchanges=[ExchangeRow(x, x.delivery_id) for x in exchanges],
        verdict=verdict,
        next_steps=steps,
        more_exchanges=more_exchanges,
    )


def _verdict(
    results: list[Result], picked: Result | None, deliveries: list[DeliveryRow], rules: list[Rule], maximum_for,
) -> tuple[str, list[str], list[DeliveryRow]]:
    """The verdict, the next steps, and the delivery rows with advice that says the same as the steps.

    One truth: the latest delivery's row says what the first step says; an older closed row says it
    was replaced; every failed rule's step is among the steps.
    """
    failed = [rule for rule in rules if not rule.passed]
    rule_steps = [rule.step for rule in failed if rule.step]
    if not results:
        return (
            "No result recorded: the learner has not finished a scored attempt at this activity in this course.",
            ["Check that the learner finished the activity (Courseware › Attempts); nothing was reported to grade sync."],
            deliveries,
        )
    if picked is None:
        verdict = "Not synced: no attempt is eligible. " + "; ".join(f"{r.title} — failed" for r in failed[:3])
        return verdict, _unique(rule_steps) or ["No attempt is eligible; see each attempt's reason below."], deliveries
    if not deliveries:
        return (
            "Eligible, but no grade was queued for the LMS.",
            _unique(rule_steps + ["Resync this grade to send the policy's grade now."]),
            deliveries,
        )
    latest = deliveries[0]
    delivery = latest.delivery
    picked_score = score_text(picked.score, maximum_for(picked))
    advice = latest.advice
    if delivery.status == DeliveryStatus.SENT and delivery.score != picked.score:
        advice = (f"The LMS holds {latest.score} (sent at {local_text(delivery.sent_at)}), but the policy now picks "
                  f"{picked_score} (a policy change or a newer attempt): resync this grade.")
    elif delivery.status == DeliveryStatus.SENT and failed:
        advice = f"The LMS accepted {latest.score} at {local_text(delivery.sent_at)}: nothing to do for this grade."
    rows = [replace(latest, advice=advice)]
    steps = [advice] if not (delivery.status == DeliveryStatus.SENT and failed and delivery.score == picked.score) else []
    for row in deliveries[1:]:
        if row.delivery.status in OPEN_STATUSES:
            rows.append(row)  # another open row (another line item): it is still sent, and says how
            steps.append(row.advice)
        else:
            rows.append(replace(row, advice=f"Replaced by delivery #{delivery.pk}, the latest: nothing to do on this one."))
    status = delivery.get_status_display()
    if latest.overdue:
        status = f"{status}, overdue"
    if delivery.score == picked.score:
        verdict = f"{status}: {latest.score}, the grade the policy picks (delivery #{delivery.pk})."
    else:
        verdict = f"{status}: {latest.score} (delivery #{delivery.pk}); the policy picks {picked_score}."
    return verdict, _unique(steps + rule_steps) or [advice], rows


def _unique(steps: list[str]) -> list[str]:
    return list(dict.fromkeys(step for step in steps if step))


# --- The search box ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    lti_user_id: int
    learner: str
    email: str
    sub: str
    course_id: int
    course: str
    context_id: str
    institution: str
    activity_key: str
    activity_title: str
    attempts: int
    last_completed_at: datetime.datetime | None


def find(query: str, *, limit: int = MAX_SEARCH_ROWS) -> list[Match]:
    """(learner, course, activity) triples with results, found by LMS user id (sub), email, name,
    course title, LMS context id, or a delivery / result id (#123)."""
    text = (query or "").strip()
    if not text:
        return []
    if text.lstrip("#").isdigit():
        number = int(text.lstrip("#"))
        where = Q(pk=number) | Q(deliveries__pk=number)
    else:
        users = learners_matching(text).values("pk")[:200]
        courses = Course.objects.filter(Q(title__icontains=text) | Q(context__id_on_platform=text)).values("pk")[:200]
        where = Q(lti_user__in=users) | Q(course__in=courses)
    rows = (
        Result.objects.filter(where, lti_user__isnull=False)
        .values(
            "lti_user_id", "lti_user__name", "lti_user__email", "lti_user__sub", "course_id", "course__title",
            "course__context__id_on_platform", "course__institution__name", "activity_key",
        )
        .annotate(attempts=Count("pk", distinct=True), last=Max("completed_at"), title=Max("activity_title"))
        .order_by("-last")[:limit]
    )
    return [
        Match(
            lti_user_id=row["lti_user_id"], learner=row["lti_user__name"] or row["lti_user__email"] or row["lti_user__sub"],
            email=row["lti_user__email"], sub=row["lti_user__sub"], course_id=row["course_id"],
            course=row["course__title"] or row["course__context__id_on_platform"], context_id=row["course__context__id_on_platform"],
            institution=row["course__institution__name"], activity_key=row["activity_key"],
            activity_title=row["title"] or row["activity_key"], attempts=row["attempts"], last_completed_at=row["last"],
        )
        for row in rows
    ]


def learners_matching(text: str, *, by_name: bool = True) -> QuerySet[LtiUser]:
    """LTI users whose LMS user id (sub) is `text`, whose email is `text` in any case, or — when
    `by_name` and `text` has three characters or more — whose name contains it in any case.

    Each test has its index (migration gradesync 0005: sub; UPPER(email); a trigram index on
    UPPER(name), PostgreSQL only), so the search stays fast however many learners there are.
    """
    text = (text or "").strip()
    if not text:
        return LtiUser.objects.none()
    match = Q(sub=text) | Q(email__iexact=text)
    if by_name and len(text) >= NAME_SEARCH_MIN:
        match |= Q(name__icontains=text)
    return LtiUser.objects.filter(match)


@dataclass(frozen=True)
class LearnerGrade:
    """One (course, activity) a learner has results for, with its latest delivery."""

    course_id: int
    course: str
    institution: str
    activity_key: str
    activity_title: str
    attempts: int
    last_completed_at: datetime.datetime | None
    delivery_id: int | None
    delivery_status: str | None
    delivery_status_label: str
    delivery_score: str = "—"  # the latest delivery's grade, "8 / 10 (80 %)"


def learner_grades(lti_user: LtiUser, *, limit: int = MAX_LEARNER_GRADES) -> tuple[list[LearnerGrade], bool]:
    """The learner's (course, activity) pairs, latest completion first, and whether there were more
    than `limit`. Two queries on the ledger's and the outbox's lti_user indexes."""
    rows = list(
        Result.objects.filter(lti_user=lti_user)
        .values("course_id", "course__title", "course__context__id_on_platform", "course__institution__name", "activity_key")
        .annotate(attempts=Count("pk"), last=Max("completed_at"), title=Max("activity_title"))
        .order_by("-last", "course_id", "activity_key")[: limit + 1]
    )
    latest: dict[tuple[int, str], dict] = {}
    for delivery in (
        Delivery.objects.filter(lti_user=lti_user).order_by("-id")
        .values("id", "course_id", "activity_key", "status", "score", "line_item__maximum_score")[:MAX_LEARNER_DELIVERIES]
    ):
        latest.setdefault((delivery["course_id"], delivery["activity_key"]), delivery)
    labels = dict(DeliveryStatus.choices)
    grades = []
    for row in rows[:limit]:
        delivery = latest.get((row["course_id"], row["activity_key"]))
        status = delivery["status"] if delivery else None
        grades.append(LearnerGrade(
            course_id=row["course_id"],
            course=row["course__title"] or row["course__context__id_on_platform"],
            institution=row["course__institution__name"],
            activity_key=row["activity_key"],
            activity_title=row["title"] or row["activity_key"],
            attempts=row["attempts"],
            last_completed_at=row["last"],
            delivery_id=delivery["id"] if delivery else None,
            delivery_status=status,
            delivery_status_label=str(labels.get(status, "—")) if status else "—",
            delivery_score=score_text(delivery["score"], delivery["line_item__maximum_score"]) if delivery else "—",
        ))
    return grades, len(rows) > limit
