"""The player and the instructor's scheduling page. Thin: every write is in services.py.

Pages are framed inside the LMS, by the origins of the session's launch only (framing.py). Who plays
is the LTI launch the session is bound to, or a staff member logged in directly (their attempts never
sync). A launch reaches only its own institution's links, attempts and courses: anything of another
institution is "not found" (404), never "forbidden", so its existence is not revealed.
"""
from __future__ import annotations

from django.contrib import admin
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from gradesync import api as gradesync_api

from . import framing, services
from .framing import framed_by_launch
from .models import QUESTION_KINDS, TIMED_KINDS, Activity, ActivityKind, ActivityLink, Attempt, LaunchRole, Placement
from .services import AttemptRefused, Player, ScheduleRefused
from .sessions import current_launch

NO_PLAYER = "Open this activity from your LMS course: this session was not started by a launch from the LMS."


def refuse(request: HttpRequest, reason: str, *, status: int) -> HttpResponse:
    return framing.refusal(render(request, "courseware/refused.html", {"reason": reason}, status=status))


def _player(request: HttpRequest) -> Player | None:
    # Staff play only once signed in as the admin requires (password and second factor).
    staff = request.user if admin.site.has_permission(request) else None
    return services.player_for(launch=current_launch(request), user=staff)


def _link(player: Player, link_id: int) -> ActivityLink:
    # Another course's link of the same institution plays (recorded ineligible); another institution's is 404.
    return get_object_or_404(player.links(), pk=link_id)


def _frame(request: HttpRequest, player: Player, link: ActivityLink, **extra) -> dict:
    """What every player page shows: the activity, who plays, and whether their results count."""
    eligible, reason = services.eligibility_for(player=player, course=link.course)
    return {
        "link": link,
        "activity": link.activity,
        "player": player,
        "eligible": eligible,
        "ineligible_reason": reason,
        "link_graded": link.graded,
        **extra,
    }


def _history(player: Player, link: ActivityLink) -> dict:
    allowed = services.attempts_allowed_for(course=link.course, activity=link.activity)
    finished = list(
        player.attempts()
        .filter(course=link.course, activity=link.activity, completed_at__isnull=False)
        .order_by("number")
    )
    return {
        "attempts_allowed": allowed,
        "attempts_allowed_words": services.describe_allowed(allowed),
        "finished": finished,
        "attempts_left": None if allowed is None else max(0, allowed - len(finished)),
        "refusal": services.refusal_to_start(player=player, course=link.course, activity=link.activity),
    }


@framed_by_launch
@require_GET
def play(request: HttpRequest, link_id: int) -> HttpResponse:
    """A resource link opens its activity. Opening a reading or video starts its clock."""
    player = _player(request)
    if player is None:
        return refuse(request, NO_PLAYER, status=403)
    link = _link(player, link_id)
    activity = link.activity
    if not activity.is_published:
        return refuse(request, "This activity is not available right now. Ask your instructor.", status=404)
    if activity.kind == ActivityKind.SECTION_HEADER:
        items = activity.items.filter(is_published=True).order_by("position", "id")
        return render(request, "courseware/section.html", _frame(request, player, link, items=items))
    if activity.kind in TIMED_KINDS:
        earned = services.earned_timed_credit(player=player, link=link)
        attempt = None
        if earned is None:
            attempt = services.start_attempt(player=player, link=link)
        return render(
            request,
            "courseware/timed.html",
            _frame(
                request, player, link,
                attempt=attempt,
                earned=earned,
                seconds=services.presence_seconds(attempt=attempt) if attempt else 0,
                required_seconds=services.REQUIRED_PRESENCE_SECONDS,
                ping_seconds=services.PING_INTERVAL_SECONDS,
                presence_url=reverse("courseware:presence", kwargs={"link_id": link.pk, "attempt_id": attempt.pk})
                if attempt else "",
            ),
        )
    if activity.kind in QUESTION_KINDS:
        attempt = services.open_attempt(player=player, link=link)
        if attempt is None:
            return render(request, "courseware/intro.html", _frame(request, player, link, **_history(player, link)))
        return _questions_page(request, player, link, attempt)
    raise Http404("Unknown activity kind.")


def _questions_page(
    request: HttpRequest, player: Player, link: ActivityLink, attempt: Attempt, *, error: str = "", status: int = 200
) -> HttpResponse:
    given = request.POST if request.method == "POST" else {}
    questions = [
        {
            "question": q,
            "field": f"q-{q.pk}",
            "given": given.get(f"q-{q.pk}", ""),
            "choices": [{"index": str(i), "text": text} for i, text in enumerate(q.choices)],
        }
        for q in link.activity.questions.all()
    ]
    return render(
        request,
        "courseware/questions.html",
        _frame(request, player, link, attempt=attempt, questions=questions, error=error, **_history(player, link)),
        status=status,
    )


@framed_by_launch
@require_POST
def start(request: HttpRequest, link_id: int) -> HttpResponse:
    """Start the next attempt at a quiz, assessment, practice test or lab (or continue the open one)."""
    player = _player(request)
    if player is None:
        return refuse(request, NO_PLAYER, status=403)
    link = _link(player, link_id)
    if link.activity.kind not in QUESTION_KINDS:
        return HttpResponseRedirect(reverse("courseware:play", kwargs={"link_id": link.pk}))
    try:
        services.start_attempt(player=player, link=link)
    except AttemptRefused as refusal:
        context = _frame(request, player, link, **_history(player, link))
        context["refusal"] = str(refusal)
        return render(request, "courseware/intro.html", context, status=403)
    return HttpResponseRedirect(reverse("courseware:play", kwargs={"link_id": link.pk}))


@framed_by_launch
@require_POST
def submit(request: HttpRequest, link_id: int, attempt_id: int) -> HttpResponse:
    """Score the answers on the server and finish the attempt."""
    player = _player(request)
    if player is None:
        return refuse(request, NO_PLAYER, status=403)
    link = _link(player, link_id)
    answers = {key[2:]: value for key, value in request.POST.items() if key.startswith("q-")}
    try:
        attempt = services.submit_answers(attempt_id=attempt_id, player=player, link=link, answers=answers)
    except Attempt.DoesNotExist:
        raise Http404("No such attempt of yours.")
    except AttemptRefused:
        pass  # already submitted (a double click): show its result
    return HttpResponseRedirect(reverse("courseware:attempt", kwargs={"link_id": link.pk, "attempt_id": attempt_id}))


@framed_by_launch
@require_GET
def attempt_result(request: HttpRequest, link_id: int, attempt_id: int) -> HttpResponse:
    player = _player(request)
    if player is None:
        return refuse(request, NO_PLAYER, status=403)
    link = _link(player, link_id)
    attempt = get_object_or_404(
        player.attempts().select_related("activity"), pk=attempt_id, course=link.course, activity=link.activity
    )
    if attempt.completed_at is None:
        return HttpResponseRedirect(reverse("courseware:play", kwargs={"link_id": link.pk}))
    show_answers = link.activity.kind in {ActivityKind.PRACTICE_TEST, ActivityKind.LAB}
    marks = []
    for question in link.activity.questions.all():
        mark = attempt.answers.get(str(question.pk), {})
        given = mark.get("given", "")
        if question.choices and given.isdigit() and int(given) < len(question.choices):
            given = question.choices[int(given)]
        expected = ""
        if show_answers:
            expected = question.choices[int(question.answer)] if question.choices else " or ".join(question.answer)
        marks.append({"question": question, "given": given, "correct": mark.get("correct", False), "expected": expected})
    correct = sum(1 for m in marks if m["correct"])
    return render(
        request,
        "courseware/result.html",
        _frame(
            request, player, link,
            attempt=attempt, marks=marks, correct=correct, total=len(marks),
            percent=round(attempt.score * 100) if attempt.score is not None else 0,
            grade_sync=services.attempt_sync_status(attempt=attempt) if link.activity.is_gradable else None,
            return_url=player.launch.return_url if player.launch else "",
            **_history(player, link),
        ),
    )


@require_GET
def captions(request: HttpRequest, link_id: int) -> HttpResponse:
    """The video's WebVTT captions, for its <track> (same session and tenant wall as the page)."""
    player = _player(request)
    if player is None:
        return HttpResponse(NO_PLAYER, status=403, content_type="text/plain; charset=utf-8")
    link = _link(player, link_id)
    activity = link.activity
    if activity.kind != ActivityKind.VIDEO or not activity.is_published or not activity.captions_vtt.strip():
        raise Http404("This activity has no captions.")
    response = HttpResponse(activity.captions_vtt, content_type="text/vtt; charset=utf-8")
    response["Content-Language"] = activity.captions_language
    response["Cache-Control"] = "private, max-age=300"
    return response


@require_POST
def presence(request: HttpRequest, link_id: int, attempt_id: int) -> JsonResponse:
    """The reading or video page's ping. The server measures presence; the page only reports it."""
    player = _player(request)
    if player is None:
        return JsonResponse({"error": NO_PLAYER}, status=403)
    try:
        link = player.links().get(pk=link_id)
        seen = services.record_presence(attempt_id=attempt_id, player=player, link=link)
    except (ActivityLink.DoesNotExist, Attempt.DoesNotExist):
        return JsonResponse({"error": "No such attempt of yours."}, status=404)
    return JsonResponse(
        {
            "seconds": seen.seconds,
            "required": services.REQUIRED_PRESENCE_SECONDS,
            "completed": seen.completed,
        }
    )


@framed_by_launch
@require_http_methods(["GET", "POST"])
def schedule(request: HttpRequest) -> HttpResponse:
    """Attempts allowed for the custom quizzes and competency assessments of the instructor's course."""
    launch = current_launch(request)
    if launch is None or launch.role != LaunchRole.INSTRUCTOR:
        return refuse(
            request,
            "Only the course's instructors can schedule attempts: open this page from your LMS course as an instructor.",
            status=403,
        )
    course = launch.course
    activities = services.schedulable_activities(course=course)
    error, saved, error_for, status = "", "", None, 200
    if request.method == "POST":
        raw_id = request.POST.get("activity", "")
        # Another course's activity, or none: "not yours" looks like "not there".
        activity = get_object_or_404(services.placed_activities(course=course), pk=int(raw_id)) if raw_id.isdigit() else None
        if activity is None:
            raise Http404("No such activity in this course.")
        try:
            allowed = services.parse_attempts_allowed(request.POST.get("attempts_allowed", ""))
            services.set_attempts_allowed(launch=launch, activity=activity, attempts_allowed=allowed)
        except ScheduleRefused as refusal:
            error, error_for, status = str(refusal), activity.pk, 400
        except Activity.DoesNotExist:
            raise Http404("No such activity in this course.")
        else:
            saved = f"“{activity.title}”: {services.describe_allowed(allowed).lower()} allowed."
    rows = [
        {
            "activity": activity,
            "allowed": (allowed := services.attempts_allowed_for(course=course, activity=activity)),
            "allowed_words": services.describe_allowed(allowed),
            "error": error if error_for == activity.pk else "",
        }
        for activity in activities
    ]
    return render(
        request,
        "courseware/schedule.html",
        {"launch": launch, "course": course, "rows": rows, "error": error, "saved": saved},
        status=status,
    )


@framed_by_launch
@require_GET
def instructor_tools(request: HttpRequest) -> HttpResponse:
    """The instructor's tools for the launch's course: grade sync and attempts allowed, one click each.

    Opened by the ungraded "Instructor tools" link (deep linking, Canvas's course navigation) and
    from the player; what is shown is read from the launch's course only.
    """
    launch = current_launch(request)
    if launch is None or launch.role != LaunchRole.INSTRUCTOR:
        return refuse(
            request,
            "The instructor tools are for the course's instructors: open them from your LMS course as an instructor.",
            status=403,
        )
    course = launch.course
    return render(
        request,
        "courseware/instructor_tools.html",
        {
            "launch": launch,
            "course": course,
            "graded_count": len(_graded_activities(course)),
            "schedulable_count": services.schedulable_activities(course=course).count(),
        },
    )


NOT_INSTRUCTOR = "Only the course's instructors see its grade sync: open this page from your LMS course as an instructor."


def _instructor_course(request: HttpRequest, course_id: int):
    """The launch's course when the session is an instructor's launch from it; another course is 404."""
    launch = current_launch(request)
    if launch is not None and launch.course_id != course_id:
        raise Http404("No such course.")  # not yours looks like not there, whatever the role
    if launch is None or launch.role != LaunchRole.INSTRUCTOR:
        return launch, None
    return launch, launch.course


def _graded_activities(course) -> list[tuple[str, str]]:
    graded = (
        Activity.objects.filter(
            Q(pk__in=Placement.objects.filter(course=course, graded=True).values("activity"))
            | Q(pk__in=ActivityLink.objects.filter(course=course, graded=True).values("activity"))
        )
        .order_by("position", "id")
        .values_list("pk", "title")
    )
    return [(str(pk), title) for pk, title in graded]


@framed_by_launch
@require_http_methods(["GET", "POST"])
def grade_sync(request: HttpRequest, course_id: int) -> HttpResponse:
    """The instructor's grade sync for their course: learners × graded activities, and "Resync this course"."""
    launch, course = _instructor_course(request, course_id)
    if course is None:
        return refuse(request, NOT_INSTRUCTOR, status=403)
    outcome, status = None, 200
    if request.method == "POST":
        outcome = gradesync_api.request_course_resync(course=course, instructor=launch.lti_user)
        if not outcome.started:
            status = 429 if outcome.retry_at else 409
    grid = gradesync_api.course_sync_grid(course=course, activities=_graded_activities(course))
    return render(
        request,
        "courseware/grade_sync.html",
        {"launch": launch, "course": course, "grid": grid, "outcome": outcome},
        status=status,
    )


@require_GET
def grade_sync_progress(request: HttpRequest, course_id: int) -> JsonResponse:
    """The course's latest resync, polled by the grade sync page."""
    _launch, course = _instructor_course(request, course_id)
    if course is None:
        return JsonResponse({"error": NOT_INSTRUCTOR}, status=403)
    state = gradesync_api.course_resync_state(course=course, polled=True)
    return JsonResponse(
        {
            "status": state.status, "status_label": state.status_label, "percent": state.percent,
            "planned": state.planned, "sent": state.sent, "refused": state.refused, "failed": state.failed,
            "active": state.active,
            "next_allowed_at": state.next_allowed_at.isoformat() if state.next_allowed_at else None,
        }
    )
