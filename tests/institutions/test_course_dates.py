"""Course dates as LMSes send them in custom parameters: a bad date never breaks a launch."""
import datetime

import pytest

from institutions.models import CourseDatesSource
from institutions.services import parse_lms_datetime, upsert_course_from_launch
from tests.factories import CourseFactory

UTC = datetime.timezone.utc


@pytest.mark.parametrize(
    "value,expected",
    [
        ("2018-01-15 00:00:00 -0700", datetime.datetime(2018, 1, 15, 7, 0, tzinfo=UTC)),
        ("2026-09-01T08:30:00Z", datetime.datetime(2026, 9, 1, 8, 30, tzinfo=UTC)),
        ("2026-09-01T08:30:00.250+02:00", datetime.datetime(2026, 9, 1, 6, 30, 0, 250000, tzinfo=UTC)),
        ("2026-09-01", datetime.datetime(2026, 9, 1, tzinfo=UTC)),
        ("$Canvas.course.startAt", None),
        ("", None),
        ("next tuesday", None),
        (None, None),
    ],
)
def test_lms_date_formats(value, expected):
    assert parse_lms_datetime(value) == expected


def test_a_bare_end_date_means_the_end_of_that_day():
    assert parse_lms_datetime("2026-12-20", end_of_day=True) == datetime.datetime(2026, 12, 20, 23, 59, 59, 999999, tzinfo=UTC)


@pytest.mark.django_db
class TestCourseFromLaunch:
    def _upsert(self, course, start, end):
        return upsert_course_from_launch(
            context=course.context, deployment=course.deployment, institution=course.institution,
            title="Networking 101", start_value=start, end_value=end,
        )

    def test_dates_from_the_lms_are_stored_with_their_source(self, two_institutions):
        course = CourseFactory(institution=two_institutions[0])
        course = self._upsert(course, "2026-09-01 00:00:00 -0700", "2026-12-20 23:59:59 -0700")
        assert course.starts_at == datetime.datetime(2026, 9, 1, 7, tzinfo=UTC)
        assert course.dates_source == CourseDatesSource.LMS
        assert course.title == "Networking 101"

    def test_unresolved_or_empty_dates_keep_what_was_known(self, two_institutions):
        course = self._upsert(CourseFactory(institution=two_institutions[0]), "2026-09-01", "2026-12-20")
        course = self._upsert(course, "$Canvas.course.startAt", "")
        assert course.starts_at == datetime.datetime(2026, 9, 1, tzinfo=UTC)
        assert course.ends_at.date() == datetime.date(2026, 12, 20)

    def test_an_end_before_the_start_is_ignored(self, two_institutions):
        course = self._upsert(CourseFactory(institution=two_institutions[0]), "2026-12-20", "2026-09-01")
        assert course.starts_at is None and course.ends_at is None

    def test_dates_set_by_support_win_over_the_lms(self, two_institutions):
        course = CourseFactory(institution=two_institutions[0], dates_source=CourseDatesSource.SUPPORT,
                               starts_at=datetime.datetime(2026, 1, 1, tzinfo=UTC))
        course = self._upsert(course, "2026-09-01", "2026-12-20")
        assert course.starts_at == datetime.datetime(2026, 1, 1, tzinfo=UTC)
        assert course.dates_source == CourseDatesSource.SUPPORT

    def test_a_launch_of_an_unchanged_course_locks_and_writes_nothing(self, two_institutions):
        # Launches run beside submits whose grade rows check their foreign keys to the course at commit:
        # a lock taken on every launch deadlocked them (the multi-host drill). Only a change takes one.
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        course = self._upsert(CourseFactory(institution=two_institutions[0]), "2026-09-01", "2026-12-20")
        with CaptureQueriesContext(connection) as unchanged:
            self._upsert(course, "2026-09-01", "2026-12-20")
        statements = [q["sql"] for q in unchanged.captured_queries]
        assert not [sql for sql in statements if "FOR UPDATE" in sql or sql.startswith("UPDATE")], statements
        with CaptureQueriesContext(connection) as changed:
            course = self._upsert(course, "2026-09-02", "2026-12-20")
        assert any("FOR UPDATE" in q["sql"] for q in changed.captured_queries) or connection.vendor == "sqlite"
        assert course.starts_at == datetime.datetime(2026, 9, 2, tzinfo=UTC)
