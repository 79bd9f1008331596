"""Grade sync over HTTP against the sandbox LMS, with its Canvas and Moodle behaviours."""
from __future__ import annotations

import datetime
import itertools
from decimal import Decimal

import pytest
from django.utils import timezone

from courseware.models import Activity, ActivityKind, ActivityLink, Launch
from gradesync import api as gradesync_api
from gradesync import ledger, outbox, queue, sender, sweeper, wakeups
from gradesync.outcomes import Outcome
from gradesync.models import Delivery, DeliveryExchange, DeliveryStatus, Result
from institutions.models import GradePolicy
from sandbox_lms import api as sandbox
from sandbox_lms.models import SandboxToken
from tests import lms

pytestmark = pytest.mark.django_db(transaction=True)
_refs = itertools.count(1)


class Classroom:
    """A sandbox course with one graded quiz placed through deep linking, launched once by each student."""

    def __init__(self, base_url: str, institution, profile: str, points: float = 20) -> None:
        self.connected = lms.connect(base_url, institution, profile=profile)
        self.quiz = Activity.objects.create(
            slug=f"quiz-{next(_refs)}", title="Quiz: subnetting", kind=ActivityKind.CUSTOM_QUIZ, default_points=10
        )
        done = lms.deep_link(lms.browser(), self.connected, {self.quiz.pk: {"graded": True, "points": points}})
        assert done.status_code == 200, done.text[:500]
        self.sandbox_link = self.connected.course.resource_links.order_by("-id").first()
        self.sandbox_line_item = self.sandbox_link.line_items.get()

    def launch(self, student) -> Launch:
        lms.launch(lms.browser(), user=student, resource_link=self.sandbox_link)
        return Launch.objects.filter(lti_user__sub=student.sub).latest("id")

    def finish(self, launch: Launch, score: str, *, minutes_ago: float = 0) -> Result:
        link = ActivityLink.objects.get(resource_link=launch.resource_link)
        return gradesync_api.record_result(
            source_ref=f"test-{next(_refs)}",
            lti_user=launch.lti_user,
            course=launch.course,
            activity_key=str(link.activity_id),
            activity_title=link.activity.title,
            resource_link=launch.resource_link,
            score=Decimal(score),
            completed_at=timezone.now() - datetime.timedelta(minutes=minutes_ago),
            launch=gradesync_api.LaunchFacts(role=launch.role, course=launch.course, deployment=launch.deployment),
            link_graded=link.graded,
        )

    def gradebook(self, student):
        cell = sandbox.grades(line_item=self.sandbox_line_item).get(student.sub)
        return None if cell is None else cell.result

    def score_posts(self):
        return [e for e in sandbox.request_log(registration=self.connected.seeded.registration) if e.path.endswith("/scores") or "/scores" in e.path]


@pytest.fixture
def canvas(live_server, two_institutions):
    return Classroom(live_server.url, two_institutions[0], "canvas")


@pytest.fixture
def moodle(live_server, two_institutions):
    return Classroom(live_server.url, two_institutions[1], "moodle")


def test_first_grade_of_a_new_course_lands_at_once_with_no_setup(canvas):
    student = canvas.connected.students[0]
    launch = canvas.launch(student)
    started = timezone.now()
    canvas.finish(launch, "0.8")
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.SENT
    assert canvas.gradebook(student) == pytest.approx(16)  # 0.8 of the 20 points chosen at deep linking
    assert (delivery.sent_at - started).total_seconds() < 1.0
    # The line item came from the launch: no line item lookup was needed.
    assert not [e for e in sandbox.request_log(registration=canvas.connected.seeded.registration) if e.method == "GET" and "line_items" in e.path]


def test_highest_policy_keeps_the_best_attempt(canvas):
    student = canvas.connected.students[0]
    launch = canvas.launch(student)
    canvas.finish(launch, "0.9", minutes_ago=10)
    canvas.finish(launch, "0.5")
    assert canvas.gradebook(student) == pytest.approx(18)


def test_most_recent_policy_sends_the_latest_attempt(canvas):
    institution = canvas.connected.institution
    institution.grade_policy = GradePolicy.MOST_RECENT
    institution.save()
    student = canvas.connected.students[0]
    launch = canvas.launch(student)
    canvas.finish(launch, "0.9", minutes_ago=10)
    canvas.finish(launch, "0.5")
    assert canvas.gradebook(student) == pytest.approx(10)


def test_ineligible_results_are_recorded_with_their_reason_and_never_sent(canvas):
    instructor = canvas.connected.instructor
    launch = canvas.launch(instructor)
    result = canvas.finish(launch, "1.0")
    assert not result.is_eligible and "Role at launch: Instructor" in result.ineligible_reason
    assert not Delivery.objects.exists() and not canvas.score_posts()


def test_a_newer_grade_supersedes_an_undelivered_older_one(canvas):
    student = canvas.connected.students[0]
    launch = canvas.launch(student)
    sandbox.set_faults(registration=canvas.connected.seeded.registration, error_rate=1.0)
    sandbox.forget_caches()
    canvas.finish(launch, "0.4")
    first = Delivery.objects.get()
    assert first.status == DeliveryStatus.RETRYING
    canvas.finish(launch, "0.7", minutes_ago=-1)
    assert Delivery.objects.count() == 1  # one open delivery per (line item, user)
    first.refresh_from_db()
    assert first.score == Decimal("0.7") and first.version == 2
    sandbox.set_faults(registration=canvas.connected.seeded.registration)
    sandbox.forget_caches()
    Delivery.objects.update(next_attempt_at=timezone.now())
    assert sender.deliver(first.pk) == "sent"
    assert canvas.gradebook(student) == pytest.approx(14)


def test_canvas_allowed_attempts_refusal_is_visible_and_a_resync_lands(canvas):
    canvas.sandbox_line_item.allowed_attempts = 1
    canvas.sandbox_line_item.save()
    sandbox.forget_caches()
    student = canvas.connected.students[0]
    launch = canvas.launch(student)
    canvas.finish(launch, "0.5", minutes_ago=5)
    canvas.finish(launch, "0.9")  # a second live submission: Canvas refuses it
    refused = Delivery.objects.order_by("-id").first()
    assert refused.status == DeliveryStatus.REFUSED and refused.last_status_code == 422
    assert "Raise Allowed Attempts in Canvas" in refused.last_message
    assert "maximum number of allowed attempts" in refused.last_message
    assert canvas.gradebook(student) == pytest.approx(10)
    # Support resyncs: sent as new_submission false, Canvas takes it.
    ledger.plan_delivery(course=launch.course, lti_user=launch.lti_user, activity_key=str(canvas.quiz.pk), resource_link=launch.resource_link, resync=True)
    assert canvas.gradebook(student) == pytest.approx(18)
    resync = Delivery.objects.order_by("-id").first()
    assert resync.is_resync and resync.status == DeliveryStatus.SENT


def test_canvas_stale_timestamp_is_resent_once_with_a_fresh_one(canvas):
    student = canvas.connected.students[0]
    launch = canvas.launch(student)
    canvas.finish(launch, "0.5")
    # Someone else (another tool, a manual grade) wrote a later timestamp into the gradebook.
    cell = sandbox.grades(line_item=canvas.sandbox_line_item)[student.sub]
    cell.timestamp = timezone.now() + datetime.timedelta(seconds=30)
    cell.save()
    canvas.finish(launch, "0.75", minutes_ago=-1)
    delivery = Delivery.objects.order_by("-id").first()
    assert delivery.status == DeliveryStatus.SENT
    statuses = [x.status_code for x in delivery.exchanges.order_by("id")]
    assert statuses == [400, 200]
    assert canvas.gradebook(student) == pytest.approx(15)


def test_moodle_same_second_scores_are_stamped_a_second_apart(moodle):
    student = moodle.connected.students[0]
    launch = moodle.launch(student)
    moodle.finish(launch, "0.5", minutes_ago=1)
    moodle.finish(launch, "0.8")
    assert moodle.gradebook(student) == pytest.approx(16)
    sent = list(Delivery.objects.filter(status=DeliveryStatus.SENT).order_by("id"))
    assert len(sent) == 2
    assert sent[1].last_timestamp.replace(microsecond=0) > sent[0].last_timestamp.replace(microsecond=0)
    assert all(x.status_code == 200 for d in sent for x in d.exchanges.all())


def test_moodle_line_item_url_keeps_its_query_string(moodle):
    student = moodle.connected.students[0]
    launch = moodle.launch(student)
    moodle.finish(launch, "1.0")
    assert "?type_id=" in Delivery.objects.get().line_item.url
    post = moodle.score_posts()[-1]
    assert "type_id=" in post.path and post.status == 200


def test_moodle_refuses_a_user_who_cannot_be_graded(moodle):
    student = moodle.connected.students[0]
    launch = moodle.launch(student)
    sandbox.enrol(course=moodle.connected.course, user=student, role=sandbox.Role.INSTRUCTOR)
    sandbox.forget_caches()
    moodle.finish(launch, "1.0")
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.REFUSED and "Incorrect score received" in delivery.last_message


def test_a_429_backs_off_for_retry_after(canvas):
    sandbox.set_faults(registration=canvas.connected.seeded.registration, throttle_rate=1.0, retry_after=42)
    sandbox.forget_caches()
    launch = canvas.launch(canvas.connected.students[0])
    before = timezone.now()
    canvas.finish(launch, "0.5")
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.RETRYING and delivery.last_status_code == 429
    wait = (delivery.next_attempt_at - before).total_seconds()
    assert 41 <= wait <= 44


def test_canvas_rate_limit_403_is_retried_not_refused(canvas):
    sandbox.configure_registration(registration=canvas.connected.seeded.registration, rate_limit_enabled=True, rate_limit_capacity=0.5, rate_limit_cost=1, rate_limit_leak_per_second=0.001)
    sandbox.forget_caches()
    sandbox.reset_rate_limits()
    launch = canvas.launch(canvas.connected.students[0])
    canvas.finish(launch, "0.5")
    delivery = Delivery.objects.get()
    assert delivery.last_status_code == 403 and delivery.status == DeliveryStatus.RETRYING


def test_one_token_serves_many_grades(canvas):
    for student in canvas.connected.students:
        canvas.finish(canvas.launch(student), "0.6")
    assert Delivery.objects.filter(status=DeliveryStatus.SENT).count() == 3
    assert grade_tokens(canvas) == 1


def grade_tokens(classroom) -> int:
    """Tokens the LMS issued for sending scores (a Canvas launch also asks one for its notice handlers, PNS)."""
    return SandboxToken.objects.filter(
        registration=classroom.connected.seeded.registration, scopes__contains="lti-ags/scope/score"
    ).count()


def test_a_rejected_token_is_replaced_once_and_the_grade_lands(canvas):
    student = canvas.connected.students[0]
    launch = canvas.launch(student)
    canvas.finish(launch, "0.5", minutes_ago=1)
    # The LMS forgets the token (revoked, or the LMS restarted its token store).
    from sandbox_lms.models import SandboxToken

    SandboxToken.objects.all().delete()
    sandbox.forget_caches()
    canvas.finish(launch, "0.9")
    delivery = Delivery.objects.order_by("-id").first()
    assert [x.status_code for x in delivery.exchanges.order_by("id")] == [401, 200]
    assert canvas.gradebook(student) == pytest.approx(18)
    canvas.connected.seeded.registration.refresh_from_db()
    # Two for scores (the first one rejected), one the launch asked for its notice handler (PNS).
    assert canvas.connected.seeded.registration.tokens_issued == 3


def test_a_course_moved_to_another_deployment_is_refused_with_the_reason(canvas):
    student = canvas.connected.students[0]
    launch = canvas.launch(student)
    other = sandbox.add_deployment(registration=canvas.connected.seeded.registration, name="Other sub-account")
    sandbox.move_course(course=canvas.connected.course, deployment=other)
    sandbox.forget_caches()
    canvas.finish(launch, "0.5")
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.REFUSED and delivery.last_status_code == 401
    assert "left this deployment's scope" in delivery.last_message


def test_an_outage_is_retried_and_the_sweeper_delivers_after_it(canvas):
    registration = canvas.connected.seeded.registration
    sandbox.set_faults(registration=registration, error_rate=1.0)
    sandbox.forget_caches()
    student = canvas.connected.students[0]
    canvas.finish(canvas.launch(student), "0.7")
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.RETRYING and delivery.attempts == 1
    sandbox.set_faults(registration=registration)
    sandbox.forget_caches()
    Delivery.objects.update(next_attempt_at=timezone.now() - datetime.timedelta(seconds=1))
    counts = sweeper.sweep()
    assert counts["requeued"] == 1
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT and canvas.gradebook(student) == pytest.approx(14)


def test_the_sweeper_wakes_an_lms_s_senders_not_a_task_per_lost_grade(canvas, monkeypatch):
    registration = canvas.connected.seeded.registration
    sandbox.set_faults(registration=registration, error_rate=1.0)
    sandbox.forget_caches()
    students = canvas.connected.students
    assert len(students) == 3
    for student in students:
        canvas.finish(canvas.launch(student), "0.7")
    sandbox.set_faults(registration=registration)
    sandbox.forget_caches()
    profile = canvas.connected.deployment.registration.profile
    profile.max_requests_in_flight = 2
    profile.save()
    wakeups._lms_cache.clear()
    Delivery.objects.update(status=DeliveryStatus.RETRYING, next_attempt_at=timezone.now() - datetime.timedelta(seconds=1))
    queued = []
    real_enqueue = queue.enqueue_delivery
    monkeypatch.setattr(queue, "enqueue_delivery", lambda pk, **kw: (queued.append(pk), real_enqueue(pk, **kw)))
    assert sweeper.sweep()["requeued"] == 2 and len(queued) == 2
    # Two tasks were enough: a sender sends every due grade of its LMS.
    assert set(Delivery.objects.values_list("status", flat=True)) == {DeliveryStatus.SENT}
    assert [canvas.gradebook(s) for s in students] == [pytest.approx(14)] * 3


def test_a_delivery_delivered_twice_is_sent_once(canvas):
    student = canvas.connected.students[0]
    canvas.finish(canvas.launch(student), "0.7")
    delivery = Delivery.objects.get()
    assert sender.deliver(delivery.pk) == "not claimed"
    assert len(canvas.score_posts()) == 1


def test_retries_give_up_after_the_horizon_and_stand_as_failed(canvas, settings):
    sandbox.set_faults(registration=canvas.connected.seeded.registration, error_rate=1.0)
    sandbox.forget_caches()
    canvas.finish(canvas.launch(canvas.connected.students[0]), "0.7")
    Delivery.objects.update(created_at=timezone.now() - datetime.timedelta(hours=73), next_attempt_at=timezone.now())
    assert sender.deliver(Delivery.objects.get().pk) == "dead"
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.DEAD and "Gave up after 72 h" in delivery.last_message


def test_a_worker_killed_mid_send_is_reclaimed_by_the_sweeper(canvas):
    student = canvas.connected.students[0]
    sandbox.set_faults(registration=canvas.connected.seeded.registration, error_rate=1.0)
    sandbox.forget_caches()
    canvas.finish(canvas.launch(student), "0.6")
    sandbox.set_faults(registration=canvas.connected.seeded.registration)
    sandbox.forget_caches()
    # As if a worker claimed it and died: SENDING, claimed long ago.
    Delivery.objects.update(status=DeliveryStatus.SENDING, claimed_at=timezone.now() - datetime.timedelta(minutes=10))
    counts = sweeper.sweep()
    assert counts["reclaimed"] == 1
    assert Delivery.objects.get().status == DeliveryStatus.SENT and canvas.gradebook(student) == pytest.approx(12)


def test_a_sender_back_after_its_claim_was_taken_over_does_not_overwrite_the_row(canvas):
    # A worker host lost its network mid-batch: the sweeper gave its rows to another worker, which sent
    # them. When the first comes back, its late "retrying" must not undo the other's "sent".
    student = canvas.connected.students[0]
    sandbox.set_faults(registration=canvas.connected.seeded.registration, error_rate=1.0)
    sandbox.forget_caches()
    canvas.finish(canvas.launch(student), "0.6")
    Delivery.objects.update(next_attempt_at=timezone.now())
    [claimed] = outbox.batch_to_send(outbox.claim_batch(canvas.connected.registration.pk, 10))
    late = outbox.land(claimed, Outcome.RETRY, 503, "The LMS answered 503")
    Delivery.objects.update(claimed_at=timezone.now() - datetime.timedelta(minutes=10))
    sandbox.set_faults(registration=canvas.connected.seeded.registration)
    sandbox.forget_caches()
    assert sweeper.sweep()["reclaimed"] == 1
    assert Delivery.objects.get().status == DeliveryStatus.SENT
    assert outbox.write_landings([late]) == {claimed.pk: outbox.CLAIM_LOST}
    assert Delivery.objects.get().status == DeliveryStatus.SENT and canvas.gradebook(student) == pytest.approx(12)


def test_a_send_cut_off_after_it_landed_is_not_posted_again(canvas):
    student = canvas.connected.students[0]
    canvas.finish(canvas.launch(student), "0.6")
    assert canvas.gradebook(student) == pytest.approx(12) and len(canvas.score_posts()) == 1
    # As if the worker died after the LMS accepted the POST but before the row was marked sent.
    Delivery.objects.update(status=DeliveryStatus.SENDING, claimed_at=timezone.now() - datetime.timedelta(minutes=10))
    assert sweeper.sweep()["reclaimed"] == 1
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.SENT and not delivery.answer_lost
    assert "already held" in delivery.last_message
    assert len(canvas.score_posts()) == 1 and canvas.gradebook(student) == pytest.approx(12)


def test_a_send_cut_off_before_it_landed_is_posted_after_reading_the_lms(canvas):
    student = canvas.connected.students[0]
    canvas.finish(canvas.launch(student), "0.6")
    # A newer grade whose send was cut off before reaching the LMS: the LMS still holds 0.6.
    Delivery.objects.update(score=Decimal("0.9"), status=DeliveryStatus.SENDING,
                            claimed_at=timezone.now() - datetime.timedelta(minutes=10))
    assert sweeper.sweep()["reclaimed"] == 1
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.SENT
    assert len(canvas.score_posts()) == 2 and canvas.gradebook(student) == pytest.approx(18)


def test_grades_flow_through_a_real_celery_worker(canvas, celery_worker):
    for student in canvas.connected.students:
        canvas.finish(canvas.launch(student), "0.5")
    import time

    deadline = time.time() + 20
    while time.time() < deadline and Delivery.objects.exclude(status=DeliveryStatus.SENT).exists():
        time.sleep(0.1)
    assert Delivery.objects.filter(status=DeliveryStatus.SENT).count() == 3
    assert all(canvas.gradebook(s) == pytest.approx(10) for s in canvas.connected.students)


def _record_while_every_slot_is_held(canvas, students, score):
    """Record one grade per student while the LMS's in-flight slots are all held: they stay pending."""
    launches = [canvas.launch(student) for student in students]
    registration_id = canvas.connected.deployment.registration_id
    slots = canvas.connected.deployment.registration.profile.max_requests_in_flight
    held = [sender.InFlightLimit(registration_id, slots) for _ in range(slots)]
    assert all(limit.acquire() for limit in held)
    try:
        for launch in launches:
            canvas.finish(launch, score)
        assert set(Delivery.objects.values_list("status", flat=True)) == {DeliveryStatus.PENDING}
        assert not canvas.score_posts()
    finally:
        for limit in held:
            limit.release()
    return list(Delivery.objects.order_by("pk"))


def test_grades_queued_while_every_slot_is_busy_are_sent_by_the_next_sender(canvas):
    """A task that finds the LMS's slots all taken leaves its grade to a sender, which sends every due grade."""
    students = canvas.connected.students[:3]
    rows = _record_while_every_slot_is_held(canvas, students, "0.6")
    assert sender.deliver(rows[0].pk) == "sent"
    assert set(Delivery.objects.values_list("status", flat=True)) == {DeliveryStatus.SENT}
    assert [canvas.gradebook(student) for student in students] == [pytest.approx(12)] * 3


def test_a_throttled_lms_gets_no_more_requests_from_that_sender(canvas):
    rows = _record_while_every_slot_is_held(canvas, canvas.connected.students[:3], "0.6")
    sandbox.set_faults(registration=canvas.connected.seeded.registration, throttle_rate=1.0, retry_after=30)
    sandbox.forget_caches()
    before = timezone.now()
    assert sender.deliver(rows[0].pk) == "retrying"
    # The 429 stopped the sender: one request to that LMS, none for the rest of the batch.
    assert DeliveryExchange.objects.filter(status_code=429).count() == DeliveryExchange.objects.count() == 1
    first = Delivery.objects.get(pk=rows[0].pk)
    assert (first.next_attempt_at - before).total_seconds() >= 29
    # The others were not tried: left for the sweeper, no attempt spent on them.
    assert list(Delivery.objects.filter(pk__in=[rows[1].pk, rows[2].pk]).values_list("status", "attempts")) == [
        (DeliveryStatus.PENDING, 0), (DeliveryStatus.PENDING, 0)
    ]


@pytest.fixture
def long_linger(monkeypatch):
    """The worker started after this lingers 3 s, so that a test's next grade surely finds it lingering."""
    monkeypatch.setenv("GRADE_DELIVERY_LINGER_SECONDS", "3")


def test_a_lingering_sender_takes_the_next_grades_without_a_task_each(canvas, long_linger, celery_worker):
    from celery.signals import after_task_publish

    launches = [canvas.launch(student) for student in canvas.connected.students]
    published = []

    def count(sender=None, **kwargs):
        published.append(sender)

    after_task_publish.connect(count)
    try:
        import time

        canvas.finish(launches[0], "0.5")
        deadline = time.time() + 20
        while time.time() < deadline and not Delivery.objects.filter(status=DeliveryStatus.SENT).exists():
            time.sleep(0.05)
        # The first grade's sender now lingers for its LMS: the next grades are pushed to it.
        for launch in launches[1:]:
            canvas.finish(launch, "0.8")
        while time.time() < deadline and Delivery.objects.exclude(status=DeliveryStatus.SENT).exists():
            time.sleep(0.05)
    finally:
        after_task_publish.disconnect(count)
    assert Delivery.objects.filter(status=DeliveryStatus.SENT).count() == 3
    assert [canvas.gradebook(s) for s in canvas.connected.students] == [pytest.approx(10), pytest.approx(16), pytest.approx(16)]
    assert published == ["gradesync.deliver_grade"], "only the first grade needed a task"


def test_a_publisher_pushes_to_a_lingering_sender_instead_of_queueing(canvas, monkeypatch):
    if wakeups.redis_client() is None:
        pytest.skip("lingering needs Redis as the shared cache (CACHE_URL=redis://…)")
    registration_id = canvas.connected.deployment.registration_id
    queued = []
    monkeypatch.setattr(queue, "enqueue_delivery", lambda pk, **kw: queued.append(pk))
    assert wakeups.mark_lingering(registration_id)
    try:
        assert wakeups.wake_senders([(101, registration_id, False)]) == 0 and queued == []
        assert wakeups.wait_for_wake(registration_id, 0.1), "the grade was pushed to the lingering sender"
        # A backlog (more than one grade at once) also starts senders on the free slots.
        assert wakeups.wake_senders([(102, registration_id, False), (103, registration_id, False)]) == 2
    finally:
        wakeups.unmark_lingering(registration_id)
    # No sender lingers any more: a grade queues a task again.
    assert wakeups.wake_senders([(104, registration_id, False)]) == 1 and queued == [102, 103, 104]


def test_one_hook_per_transaction_wakes_each_lms_once(canvas, monkeypatch):
    """400 grades recorded in one transaction are woken once per LMS after commit, not published one by one."""
    from django.db import transaction

    woken = []
    monkeypatch.setattr(wakeups, "wake_senders", lambda rows: woken.append(list(rows)) or 0)
    launches = [canvas.launch(student) for student in canvas.connected.students]
    with transaction.atomic():
        for launch in launches:
            canvas.finish(launch, "0.7")
        assert woken == []
    assert len(woken) == 1 and len(woken[0]) == 3
    # A rolled-back transaction wakes nothing, and the next one has its own hook.
    with pytest.raises(RuntimeError), transaction.atomic():
        canvas.finish(launches[0], "0.9")
        raise RuntimeError
    assert len(woken) == 1
    canvas.finish(launches[0], "0.9")
    assert len(woken) == 2 and len(woken[1]) == 1


def test_a_cache_failure_while_lingering_ends_the_lingering_not_the_delivery(canvas, monkeypatch):
    """Lingering is an optimisation: the shared cache failing under it leaves the grade sent and the slot free."""
    import redis

    calls = []
    monkeypatch.setattr(wakeups, "can_linger", lambda: True)
    monkeypatch.setattr(wakeups, "mark_lingering", lambda registration_id: True)
    monkeypatch.setattr(wakeups, "unmark_lingering", lambda registration_id: calls.append("unmarked"))

    def broken(registration_id, seconds):
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(wakeups, "wait_for_wake", broken)
    student = canvas.connected.students[0]
    canvas.finish(canvas.launch(student), "0.7")
    assert Delivery.objects.get().status == DeliveryStatus.SENT and canvas.gradebook(student) == pytest.approx(14)
    assert calls == ["unmarked"]
    registration_id = canvas.connected.deployment.registration_id
    slots = canvas.connected.deployment.registration.profile.max_requests_in_flight
    held = [sender.InFlightLimit(registration_id, slots) for _ in range(slots)]
    try:
        assert all(limit.acquire() for limit in held), "every slot was let go"
    finally:
        for limit in held:
            limit.release()


def test_a_batch_a_slow_lms_has_not_taken_after_a_second_is_given_back_in_place(canvas, monkeypatch):
    """Rows claimed but not sent within SENDER_BATCH_SECONDS go back as due, no attempt counted, so a live
    grade due meanwhile is claimed first by the next claim."""
    students = canvas.connected.students[:3]
    rows = _record_while_every_slot_is_held(canvas, students, "0.6")
    monkeypatch.setattr(sender, "SENDER_BATCH_SECONDS", 0.0)  # every batch runs out after its first send
    unclaimed = []
    real_unclaim = sender.outbox.unclaim
    monkeypatch.setattr(sender.outbox, "unclaim", lambda ids: (unclaimed.append(list(ids)), real_unclaim(ids)))
    assert sender.deliver(rows[1].pk) == "sent"
    # Its own grade, then a batch of the other two: one sent, one given back and claimed again.
    assert set(Delivery.objects.values_list("status", flat=True)) == {DeliveryStatus.SENT}
    assert unclaimed and all(len(ids) >= 1 for ids in unclaimed)
    assert list(Delivery.objects.order_by("pk").values_list("attempts", flat=True)) == [1, 1, 1]
    assert [canvas.gradebook(s) for s in students] == [pytest.approx(12)] * 3
