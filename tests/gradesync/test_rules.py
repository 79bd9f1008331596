"""Grade policy, eligibility rules and the LMS answer tables, on the ledger alone."""
import datetime
from decimal import Decimal

import pytest
from django.utils import timezone
from lti_tool.models import LtiUser

from gradesync.eligibility import check_result, first_failure
from gradesync.models import Result
from gradesync.outcomes import Outcome, classify
from gradesync.policy import pick_result
from institutions.models import GradePolicy
from tests.factories import CourseFactory

NOW = timezone.now()


def result(score, minutes_ago, eligible=True, pk=None):
    return Result(pk=pk, score=Decimal(score), completed_at=NOW - datetime.timedelta(minutes=minutes_ago), is_eligible=eligible)


class TestPolicy:
    results = [result("0.6", 30, pk=1), result("0.9", 20, pk=2), result("0.7", 10, pk=3), result("1.0", 5, eligible=False, pk=4)]

    def test_highest_sends_the_best_eligible_attempt(self):
        assert pick_result(self.results, GradePolicy.HIGHEST).pk == 2

    def test_most_recent_sends_the_latest_eligible_attempt(self):
        assert pick_result(self.results, GradePolicy.MOST_RECENT).pk == 3

    def test_no_eligible_attempt_sends_nothing(self):
        assert pick_result([result("1", 1, eligible=False)], GradePolicy.HIGHEST) is None


@pytest.mark.parametrize(
    "family,status,body,outcome,advice",
    [
        ("canvas", 200, "{}", Outcome.SENT, ""),
        ("canvas", 403, "403 Forbidden (Rate Limit Exceeded)", Outcome.RETRY, "throttled"),
        ("canvas", 400, "Provided timestamp of 2026-01-01T00:00:00Z before last updated timestamp of 2026-01-02T00:00:00Z", Outcome.STALE, ""),
        ("canvas", 422, '{"errors":{"type":"unprocessable_entity","message":"The maximum number of allowed attempts has been reached for this submission"}}', Outcome.REFUSED, "Raise Allowed Attempts in Canvas"),
        ("canvas", 422, "User not found in course or is not a student", Outcome.REFUSED, "not a student"),
        ("canvas", 401, "Access Token not linked to a Tool associated with this Context", Outcome.REFUSED, "left this deployment"),
        ("canvas", 401, "Invalid access token", Outcome.REFRESH, ""),
        ("moodle", 409, "Refusing score with an earlier timestamp", Outcome.STALE, ""),
        ("moodle", 400, "Incorrect score received", Outcome.REFUSED, "cannot be graded"),
        ("moodle", 503, "", Outcome.RETRY, ""),
        ("other", 429, "slow down", Outcome.RETRY, ""),
        ("other", 500, "", Outcome.RETRY, ""),
        ("other", 404, "no such line item", Outcome.REFUSED, ""),
    ],
)
def test_lms_answers_are_classified_per_family(family, status, body, outcome, advice):
    verdict = classify(family, status, body)
    assert verdict.outcome == outcome
    assert advice in verdict.advice


@pytest.mark.django_db
class TestEligibility:
    def make(self, course, **overrides):
        user = LtiUser.objects.create(registration=course.deployment.registration, sub="student-1")
        values = dict(
            source_ref="r1", lti_user=user, course=course, activity_key="7", score=Decimal("0.5"),
            completed_at=NOW, launch_role="learner", launched_course=course, launch_deployment=course.deployment,
            link_graded=True,
        )
        values.update(overrides)
        return Result(**values)

    @pytest.fixture
    def course(self, two_institutions):
        course = CourseFactory(institution=two_institutions[0])
        course.context.lineitems_url = "https://lms.example/api/lti/courses/1/line_items"
        course.context.save()
        return course

    def test_a_learner_launch_from_the_course_within_dates_is_eligible(self, course):
        assert first_failure(check_result(self.make(course))) is None

    @pytest.mark.parametrize(
        "overrides,rule,words",
        [
            ({"launch_role": "instructor"}, "learner", "Role at launch: Instructor"),
            ({"launch_role": "test_user"}, "learner", "Student view"),
            ({"launch_role": "", "launched_course": None}, "learner", "No LTI launch"),
            ({"link_graded": False}, "graded_link", "added ungraded"),
        ],
    )
    def test_each_failing_rule_is_named_with_its_fact(self, course, overrides, rule, words):
        failure = first_failure(check_result(self.make(course, **overrides)))
        assert failure.rule == rule and words in failure.fact

    def test_another_courses_launch_is_not_eligible(self, course, two_institutions):
        other = CourseFactory(institution=two_institutions[0], title="Other course")
        failure = first_failure(check_result(self.make(course, launched_course=other)))
        assert failure.rule == "launched_from_course" and "Other course" in failure.fact

    def test_completion_outside_the_course_dates_is_not_eligible(self, course):
        course.ends_at = NOW - datetime.timedelta(days=1)
        failure = first_failure(check_result(self.make(course), course=course))
        assert failure.rule == "within_course_dates"

    def test_completion_exactly_at_the_end_date_counts(self, course):
        course.ends_at = NOW
        assert first_failure(check_result(self.make(course), course=course)) is None

    def test_an_inactive_deployment_is_not_eligible(self, course):
        course.deployment.is_active = False
        course.deployment.save()
        failure = first_failure(check_result(self.make(course), course=course))
        assert failure.rule == "deployment_accepts" and "inactive" in failure.fact

    def test_an_inactive_institution_is_not_eligible(self, course):
        course.institution.is_active = False
        course.institution.save()
        course.deployment.ownership.institution.refresh_from_db()
        failure = first_failure(check_result(self.make(course), course=course))
        assert failure.rule == "deployment_accepts"
