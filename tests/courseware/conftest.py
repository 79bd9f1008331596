"""Courseware fixtures: two institutions, each with a course; a clock the tests move by hand."""
from __future__ import annotations

import datetime

import pytest
from django.utils import timezone

from courseware.models import ActivityKind
from courseware.sessions import LAUNCH_SESSION_KEY
from tests.courseware_factories import ActivityFactory, ActivityLinkFactory, LaunchFactory, QuestionFactory
from tests.factories import CourseFactory


@pytest.fixture
def courses(two_institutions):
    """North's course and South's course: every tenancy test has both."""
    north, south = two_institutions
    return (
        CourseFactory(institution=north, title="Network+ at North"),
        CourseFactory(institution=south, title="Security+ at South"),
    )


@pytest.fixture
def north_course(courses):
    return courses[0]


@pytest.fixture
def south_course(courses):
    return courses[1]


@pytest.fixture
def quiz():
    """A custom quiz of four questions; the right answer of each is its first choice (index 0)."""
    activity = ActivityFactory(slug="osi-quiz", title="OSI model quiz", kind=ActivityKind.CUSTOM_QUIZ)
    for n in range(4):
        QuestionFactory(activity=activity, position=n, prompt=f"OSI question {n + 1}?")
    return activity


@pytest.fixture
def link_to(north_course):
    """link_to(activity, course=north_course): a graded resource link placing it in a course."""

    def make(activity, course=None):
        return ActivityLinkFactory(course=course or north_course, activity=activity)

    return make


@pytest.fixture
def launched(client):
    """launched(course, role="learner", lti_user=None): bind the test client's session to a new launch."""

    def bind(course, role: str = "learner", lti_user=None):
        kwargs = {"lti_user": lti_user} if lti_user is not None else {}
        launch = LaunchFactory(course=course, role=role, **kwargs)
        session = client.session
        session[LAUNCH_SESSION_KEY] = launch.pk
        session.save()
        return launch

    return bind


class Clock:
    def __init__(self) -> None:
        self.now = timezone.now().replace(microsecond=0)

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    """The server's clock, moved by the test: `clock.advance(10)`. Nobody sleeps."""
    the_clock = Clock()
    monkeypatch.setattr("django.utils.timezone.now", the_clock)
    return the_clock
