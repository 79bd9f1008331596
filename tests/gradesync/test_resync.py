"""Resync at every scope against the sandbox LMS (Canvas, Moodle): jobs, progress, cancel, refusals,
the grade policy preview, and who may do what in the admin."""
from __future__ import annotations

import datetime
import json

import pytest
from django.contrib.admin.models import LogEntry
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from courseware.models import Activity, ActivityKind
from gradesync import resync
from gradesync.models import Delivery, DeliveryStatus, ResyncJob, ResyncJobStatus
from institutions.models import AuditEntry, GradePolicy
from institutions.roles import INTEGRATION, READ_ONLY, SUPPORT
from sandbox_lms import api as sandbox
from tests import lms

from .test_delivery import Classroom, _refs

pytestmark = pytest.mark.django_db(transaction=True)


class TwoQuizClassroom(Classroom):
    """A Classroom with a second graded quiz, so that one activity can be resynced apart from another."""

    def __init__(self, base_url: str, institution, profile: str) -> None:
        super().__init__(base_url, institution, profile)
        self.first = (self.quiz, self.sandbox_link, self.sandbox_line_item)
        self.quiz2 = Activity.objects.create(
            slug=f"quiz-{next(_refs)}", title="Quiz: routing", kind=ActivityKind.CUSTOM_QUIZ, default_points=10
        )
        done = lms.deep_link(lms.browser(), self.connected, {self.quiz2.pk: {"graded": True, "points": 20}})
        assert done.status_code == 200, done.text[:500]
        link2 = self.connected.course.resource_links.order_by("-id").first()
        self.second = (self.quiz2, link2, link2.line_items.get())

    def use(self, which) -> None:
        self.quiz, self.sandbox_link, self.sandbox_line_item = which

    def grade_all(self) -> None:
        """Every student: two attempts at each quiz (0.9 then 0.5, so Highest and Most Recent differ)."""
        for which in (self.first, self.second):
            self.use(which)
            for student in self.connected.students:
                launch = self.launch(student)
                self.finish(launch, "0.9", minutes_ago=60)
                self.finish(launch, "0.5", minutes_ago=30)
        self.use(self.first)

    def cell(self, which, student):
        self.use(which)
        try:
            return self.gradebook(student)
        finally:
            self.use(self.first)

    def wipe_gradebook(self) -> None:
        """Someone zeroes every cell in the LMS by hand; a resync must put the policy's grades back."""
        for which in (self.first, self.second):
            for cell in sandbox.grades(line_item=which[2]).values():
                cell.result = 0
                cell.save()
        sandbox.forget_caches()

    @property
    def course(self):
        from institutions.models import Course

        return Course.objects.get(context__id_on_platform=self.connected.course.context_id)


@pytest.fixture(params=["canvas", "moodle"])
def classroom(request, live_server, two_institutions):
    room = TwoQuizClassroom(live_server.url, two_institutions[0], request.param)
    room.grade_all()
    return room


@pytest.fixture(autouse=True)
def _staff_roles():
    """Transactional tests flush the groups the migration made: make them again."""
    from django.apps import apps

    from institutions.roles import sync_staff_roles

    sync_staff_roles(apps)


@pytest.fixture
def support(staff_user):
    return staff_user(SUPPORT)


def _run(scope: resync.ResyncScope, user) -> ResyncJob:
    job = resync.start_resync(scope=scope, acting_user=user)  # eager Celery: planned and delivered on commit
    job.refresh_from_db()
    return job


HIGH, LOW = 18.0, 10.0  # 0.9 and 0.5 of 20 points


def test_a_course_resync_puts_the_policys_grades_back_in_the_lms(classroom, support):
    classroom.wipe_gradebook()
    job = _run(resync.ResyncScope(institution=classroom.connected.institution, course=classroom.course), support)
    assert job.status == ResyncJobStatus.DONE
    assert (job.estimated, job.planned, job.sent, job.refused, job.failed, job.skipped) == (6, 6, 6, 0, 0, 0)
    for which in (classroom.first, classroom.second):
        assert [classroom.cell(which, s) for s in classroom.connected.students] == [pytest.approx(HIGH)] * 3
    assert Delivery.objects.filter(resync_job=job, is_resync=True).count() == 6
