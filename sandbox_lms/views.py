"""Thin views over the sandbox's protocol modules (`launches`, `tokens`, `ags_scores`, …): the LMS
pages a person clicks, and the platform's endpoints.

Service endpoints are CSRF-exempt and session-free. Browser pages pick the acting user from a
signed cookie (a sandbox: no passwords). Every page says it is not for production.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from django.core import signing
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.clickjacking import xframe_options_exempt
from django.views.decorators.csrf import csrf_exempt

from . import (
    ags_line_items,
    ags_scores,
    behaviour,
    caches,
    courses,
    deep_linking,
    fast,
    launches,
    platform,
    protocol,
    request_logging,
    tokens,
)
from .models import (
    Profile,
    Role,
    SandboxCourse,
    SandboxDeployment,
    SandboxEnrolment,
    SandboxLaunch,
    SandboxRegistration,
    SandboxRequestLog,
    SandboxResourceLink,
    SandboxUser,
)

USER_COOKIE = "sandbox_lms_user"


# --- Service endpoints --------------------------------------------------------------------------


def _answer(body: Any, *, status: int = 200, content_type: str = "application/json",
            headers: dict[str, str] | None = None, reason: str | None = None) -> HttpResponse:
    if body is None:
        payload = b""
    elif isinstance(body, (bytes, str)):
        payload = body
    else:
        payload = json.dumps(body)
    response = HttpResponse(payload, status=status, content_type=content_type, reason=reason)
    response["Content-Length"] = str(len(response.content))  # keep-alive without chunking, even with no middleware
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _serve(
    request: HttpRequest,
    kind: str,
    registration: SandboxRegistration | None,
    handler: Callable[[], HttpResponse],
) -> HttpResponse:
    """Faults, throttling, the handler, and the request log, in that order."""
    response: HttpResponse
    extra_headers: dict[str, str] = {}
    try:
        if registration is not None:
            behaviour.apply_faults(registration)
            extra_headers = behaviour.throttle(registration)
        response = handler()
    except protocol.ApiError as error:
        response = _answer(error.body, status=error.status, content_type=error.content_type,
                           headers=error.headers, reason=error.reason)
    except protocol.DropConnection:
        request_logging.log_exchange(
            registration_id=registration.pk if registration else None, kind=kind, method=request.method,
            path=request.get_full_path(), headers=request.headers, request_body=request.body, status=None,
            response_body="", note="connection dropped (fault)",
        )
        behaviour.drop_connection(request.META)
        return HttpResponse(status=499)
    for name, value in extra_headers.items():
        response.setdefault(name, value)
    request_logging.log_exchange(
        registration_id=registration.pk if registration else None, kind=kind, method=request.method,
        path=request.get_full_path(), headers=request.headers, request_body=request.body,
        status=response.status_code, response_body=response.content,
    )
    return response


def _bearer(request: HttpRequest, kind: str) -> tuple[caches.TokenInfo | None, HttpResponse | None]:
    try:
        return tokens.authenticate(request.headers.get("Authorization")), None
    except protocol.ApiError as error:
        return None, _serve(request, kind, None, lambda: (_ for _ in ()).throw(error))


def _query(request: HttpRequest) -> dict[str, str]:
    return {key: value for key, value in request.GET.items()}


@csrf_exempt
def jwks(request: HttpRequest) -> JsonResponse:
    return JsonResponse(platform.platform_jwks())


@csrf_exempt
def token(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    form = {key: value for key, value in request.POST.items()}
    registration = tokens.registration_for_assertion(form.get("client_assertion", ""))

    def handle() -> HttpResponse:
        answer = tokens.issue_token(form=form, registration=registration)
        return _answer(answer, content_type=tokens.token_content_type(registration))

    return _serve(request, "token", registration, handle)


@csrf_exempt
def scores(request: HttpRequest, pk: int) -> HttpResponse:
    """The same exchange as the fast WSGI front (`sandbox_lms.fast`) serves, with the log written at once."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    exchange = ags_scores.scores_exchange(
        line_item_id=pk, authorization=request.headers.get("Authorization"),
        content_type=request.content_type or "", body=request.body, query=_query(request),
    )
    request_logging.log_exchange(
        registration_id=exchange.registration_id, kind="scores", method=request.method,
        path=request.get_full_path(), headers=request.headers, request_body=request.body,
        status=None if exchange.dropped else exchange.status, response_body=exchange.body,
        note="connection dropped (fault)" if exchange.dropped else "",
    )
    if exchange.dropped:
        behaviour.drop_connection(request.META)
        return HttpResponse(status=499)
    return _answer(exchange.body, status=exchange.status, content_type=exchange.content_type,
                   headers=exchange.headers, reason=exchange.reason)


@csrf_exempt
def line_items(request: HttpRequest, course_pk: int) -> HttpResponse:
    if request.method not in ("GET", "POST"):
        return HttpResponseNotAllowed(["GET", "POST"])
    info, refused = _bearer(request, "lineitems")
    if refused:
        return refused
    registration = caches.cached_registration(info.registration_id)

    def handle() -> HttpResponse:
        if request.method == "POST":
            item = ags_line_items.create_line_item_from_service(
                course_pk=course_pk, info=info, registration=registration, body=request.body, query=_query(request)
            )
            return _answer(item, status=201, content_type=protocol.LINEITEM_MEDIA_TYPE)
        items, next_url = ags_line_items.list_line_items(
            course_pk=course_pk, info=info, registration=registration, query=_query(request)
        )
        response = _answer(items, content_type=protocol.LINEITEMS_MEDIA_TYPE)
        if next_url:
            response["Link"] = f'<{next_url}>; rel="next"'
        return response

    return _serve(request, "lineitems", registration, handle)


@csrf_exempt
def line_item(request: HttpRequest, pk: int) -> HttpResponse:
    if request.method not in ("GET", "PUT", "DELETE"):
        return HttpResponseNotAllowed(["GET", "PUT", "DELETE"])
    info, refused = _bearer(request, "lineitem")
    if refused:
        return refused
    registration = caches.cached_registration(info.registration_id)

    def handle() -> HttpResponse:
        query = _query(request)
        if request.method == "PUT":
            item = ags_line_items.update_line_item(
                pk=pk, info=info, registration=registration, body=request.body, query=query
            )
            return _answer(item, content_type=protocol.LINEITEM_MEDIA_TYPE)
        if request.method == "DELETE":
            ags_line_items.delete_line_item(pk=pk, info=info, registration=registration, query=query)
            return _answer(None, status=204)
        item = ags_line_items.get_line_item(pk=pk, info=info, registration=registration, query=query)
        return _answer(item, content_type=protocol.LINEITEM_MEDIA_TYPE)

    return _serve(request, "lineitem", registration, handle)


@csrf_exempt
def results(request: HttpRequest, pk: int) -> HttpResponse:
    info, refused = _bearer(request, "results")
    if refused:
        return refused
    registration = caches.cached_registration(info.registration_id)

    def handle() -> HttpResponse:
        rows = ags_line_items.list_results(pk=pk, info=info, registration=registration, query=_query(request))
        return _answer(rows, content_type=protocol.RESULTS_MEDIA_TYPE)

    return _serve(request, "results", registration, handle)


@csrf_exempt
def memberships(request: HttpRequest, course_pk: int) -> HttpResponse:
    info, refused = _bearer(request, "memberships")
    if refused:
        return refused
    registration = caches.cached_registration(info.registration_id)

    def handle() -> HttpResponse:
        answer = ags_line_items.list_memberships(course_pk=course_pk, info=info, registration=registration)
        return _answer(answer, content_type=protocol.MEMBERSHIPS_MEDIA_TYPE)

    return _serve(request, "memberships", registration, handle)


# --- Browser flows: launch, auth, deep-linking return --------------------------------------------


def _refused(request: HttpRequest, refusal: protocol.Refusal, *, registration_id: int | None, kind: str) -> HttpResponse:
    response = render(request, "sandbox_lms/message.html", {"title": "Refused", "message": refusal.message},
                      status=refusal.status)
    request_logging.log_exchange(
        registration_id=registration_id, kind=kind, method=request.method, path=request.get_full_path(),
        headers=request.headers, request_body=request.body if request.method == "POST" else "",
        status=refusal.status, response_body=refusal.message,
    )
    return response


@csrf_exempt
@xframe_options_exempt
def authorize(request: HttpRequest) -> HttpResponse:
    """The OIDC auth endpoint the tool redirects the browser to (GET or POST)."""
    params = {key: value for key, value in (request.POST if request.method == "POST" else request.GET).items()}
    try:
        authorized = launches.authorize(params=params)
    except protocol.Refusal as refusal:
        registration = SandboxRegistration.objects.filter(client_id=params.get("client_id", "")).first()
        return _refused(request, refusal, registration_id=registration.pk if registration else None, kind="auth")
    request_logging.log_exchange(
        registration_id=authorized.registration_id, kind="auth", method=request.method, path=request.get_full_path(),
        headers=request.headers, request_body=request.body if request.method == "POST" else "", status=200,
        response_body=f"id_token posted to {authorized.redirect_uri}",
    )
    return render(request, "sandbox_lms/autopost.html", {
        "action": authorized.redirect_uri,
        "fields": {"id_token": authorized.id_token, "state": authorized.state},
        "what": "Sending the launch to the tool",
    })


@csrf_exempt
@xframe_options_exempt
def deep_linking_return(request: HttpRequest, launch: str) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    registration_id = _launch_registration_id(launch)
    try:
        outcome = deep_linking.accept_deep_linking_response(launch_uuid=launch, token=request.POST.get("JWT", ""))
    except protocol.Refusal as refusal:
        return _refused(request, refusal, registration_id=registration_id, kind="deep_linking_return")
    request_logging.log_exchange(
        registration_id=registration_id, kind="deep_linking_return", method="POST", path=request.get_full_path(),
        headers=request.headers, request_body=request.body, status=200,
        response_body=f"created {len(outcome.links)} links, {len(outcome.line_items)} line items",
    )
    return render(request, "sandbox_lms/deep_linking_done.html", {"outcome": outcome})


def _launch_registration_id(launch_uuid: str) -> int | None:
    return SandboxLaunch.objects.filter(uuid=launch_uuid).values_list("deployment__registration_id", flat=True).first()


# --- LMS pages ----------------------------------------------------------------------------------


def acting_user(request: HttpRequest) -> SandboxUser | None:
    try:
        user_id = request.get_signed_cookie(USER_COOKIE, salt="sandbox-lms")
    except (KeyError, signing.BadSignature):
        return None
    return SandboxUser.objects.filter(pk=user_id).first()


def _enrolment(request: HttpRequest, course_pk: int) -> SandboxEnrolment:
    user = acting_user(request)
    if user is None:
        raise Http404("Pick a user first")
    enrolment = SandboxEnrolment.objects.select_related("course__deployment__registration", "user").filter(
        course_id=course_pk, user=user
    ).first()
    if enrolment is None:
        raise Http404("Not enrolled in this course")
    return enrolment


def home(request: HttpRequest) -> HttpResponse:
    user = acting_user(request)
    enrolments = (
        SandboxEnrolment.objects.filter(user=user).select_related("course").order_by("course_id") if user else []
    )
    return render(request, "sandbox_lms/home.html", {
        "users": SandboxUser.objects.prefetch_related("enrolments__course").order_by("name"),
        "acting": user,
        "enrolments": enrolments,
        "registrations": SandboxRegistration.objects.select_related("platform").order_by("id"),
    })


@csrf_exempt  # a sandbox with no passwords; its forms must work without the tool's cookie setup
def act_as(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    user = get_object_or_404(SandboxUser, pk=request.POST.get("user"))
    response = redirect("sandbox_lms:home")
    response.set_signed_cookie(USER_COOKIE, user.pk, salt="sandbox-lms", samesite="Lax", httponly=True)
    return response


def course(request: HttpRequest, pk: int) -> HttpResponse:
    enrolment = _enrolment(request, pk)
    the_course = enrolment.course
    line_items, rows = courses.gradebook(course=the_course)
    own = next((row for row in rows if row.user.pk == enrolment.user_id), None)
    registration = the_course.deployment.registration
    return render(request, "sandbox_lms/course.html", {
        "course": the_course,
        "enrolment": enrolment,
        "is_instructor": enrolment.role in protocol.CAN_DEEP_LINK,
        "links": the_course.resource_links.exclude(
            resource_link_id__startswith=launches.COURSE_NAVIGATION_PREFIX
        ).prefetch_related("line_items"),
        "own_grades": list(zip(line_items, own.cells)) if own else [],
        "deployments": SandboxDeployment.objects.filter(registration__platform=the_course.platform).select_related(
            "registration"
        ),
        "registration": registration,
    })


def gradebook(request: HttpRequest, pk: int) -> HttpResponse:
    enrolment = _enrolment(request, pk)
    if enrolment.role not in protocol.CAN_DEEP_LINK:
        raise Http404("Only instructors see the gradebook")
    line_items, rows = courses.gradebook(course=enrolment.course)
    return render(request, "sandbox_lms/gradebook.html", {
        "course": enrolment.course, "line_items": line_items, "rows": rows,
    })


def _login_initiation_page(request: HttpRequest, initiation: launches.LoginInitiation, registration_id: int) -> HttpResponse:
    request_logging.log_exchange(
        registration_id=registration_id, kind="login_initiation", method=initiation.method, path=initiation.url,
        headers={}, request_body=json.dumps(initiation.params), status=None, response_body="",
        note="sent by the browser to the tool",
    )
    if initiation.method == "GET":
        return redirect(initiation.get_url)
    return render(request, "sandbox_lms/autopost.html", {
        "action": initiation.url, "fields": initiation.params, "what": "Opening the tool",
    })


def launch(request: HttpRequest, pk: int) -> HttpResponse:
    link = get_object_or_404(SandboxResourceLink.objects.select_related("course__deployment"), pk=pk)
    enrolment = _enrolment(request, link.course_id)
    try:
        initiation = launches.start_launch(user=enrolment.user, resource_link=link, method=request.GET.get("method"))
    except protocol.Refusal as refusal:
        return render(request, "sandbox_lms/message.html", {"title": "Refused", "message": refusal.message},
                      status=refusal.status)
    return _login_initiation_page(request, initiation, link.course.deployment.registration_id)


def course_navigation(request: HttpRequest, pk: int) -> HttpResponse:
    """The course menu's "Grade sync": a launch of the tool's instructor tools (instructors only, like Canvas's
    course_navigation placement with visibility admins/teachers)."""
    enrolment = _enrolment(request, pk)
    if enrolment.role not in protocol.CAN_DEEP_LINK:
        raise Http404("Only instructors see the course's Grade sync")
    link = launches.course_navigation_link(course=enrolment.course)
    try:
        initiation = launches.start_launch(user=enrolment.user, resource_link=link, method=request.GET.get("method"))
    except protocol.Refusal as refusal:
        return render(request, "sandbox_lms/message.html", {"title": "Refused", "message": refusal.message},
                      status=refusal.status)
    return _login_initiation_page(request, initiation, enrolment.course.deployment.registration_id)


def deep_link(request: HttpRequest, pk: int) -> HttpResponse:
    enrolment = _enrolment(request, pk)
    try:
        initiation = launches.start_launch(
            user=enrolment.user, course=enrolment.course, deep_linking=True, method=request.GET.get("method")
        )
    except protocol.Refusal as refusal:
        return render(request, "sandbox_lms/message.html", {"title": "Refused", "message": refusal.message},
                      status=refusal.status)
    return _login_initiation_page(request, initiation, enrolment.course.deployment.registration_id)


@xframe_options_exempt
def launch_return(request: HttpRequest, pk: int) -> HttpResponse:
    """launch_presentation.return_url: shows the tool's lti_msg / lti_errormsg."""
    return render(request, "sandbox_lms/message.html", {
        "title": "Back from the tool",
        "message": request.GET.get("lti_errormsg") or request.GET.get("lti_msg") or "The tool sent you back.",
        "error": bool(request.GET.get("lti_errormsg")),
        "course_pk": pk,
    })


@csrf_exempt
def copy(request: HttpRequest, pk: int) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    enrolment = _enrolment(request, pk)
    if enrolment.role != Role.INSTRUCTOR:
        raise Http404("Only instructors copy courses")
    new = courses.copy_course(course=enrolment.course, title=request.POST.get("title", ""))
    return redirect("sandbox_lms:course", pk=new.pk)


@csrf_exempt
def move(request: HttpRequest, pk: int) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    enrolment = _enrolment(request, pk)
    if enrolment.role != Role.INSTRUCTOR:
        raise Http404("Only instructors move courses")
    deployment = get_object_or_404(
        SandboxDeployment, pk=request.POST.get("deployment"), registration__platform=enrolment.course.platform
    )
    courses.move_course(course=enrolment.course, deployment=deployment)
    return redirect("sandbox_lms:course", pk=pk)


@csrf_exempt
def registration(request: HttpRequest, pk: int) -> HttpResponse:
    the_registration = get_object_or_404(SandboxRegistration.objects.select_related("platform"), pk=pk)
    message = ""
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "profile":
            platform.configure_registration(
                registration=the_registration,
                profile=request.POST.get("profile", the_registration.profile),
                rate_limit_enabled=bool(request.POST.get("rate_limit_enabled")),
                token_lifetime=int(request.POST.get("token_lifetime") or the_registration.token_lifetime),
            )
            message = "Profile saved."
        elif action == "faults":
            faults = {}
            for name in behaviour.FAULT_FIELDS:
                value = request.POST.get(name, "").strip()
                if value:
                    faults[name] = value if name.startswith("outage") else float(value)
            behaviour.set_faults(registration=the_registration, **faults)
            message = "Faults saved."
        elif action == "rotate":
            platform.rotate_platform_key(platform=the_registration.platform)
            message = "A new platform key is published beside the old one."
        the_registration.refresh_from_db()
    return render(request, "sandbox_lms/registration.html", {
        "registration": the_registration,
        "profiles": Profile.choices,
        "faults": [
            (name, help, the_registration.faults.get(name, "")) for name, help in behaviour.FAULT_FIELDS.items()
        ],
        "message": message,
        "endpoints": {
            "Issuer": the_registration.platform.issuer,
            "OIDC auth": the_registration.platform.url("auth/"),
            "Token": the_registration.platform.url("token/"),
            "JWKS": the_registration.platform.url("jwks/"),
        },
        "deployments": the_registration.deployments.all(),
        "keys": the_registration.platform.keys.filter(is_published=True),
    })


def request_log(request: HttpRequest) -> HttpResponse:
    fast.flush_log()
    entries = SandboxRequestLog.objects.select_related("registration")
    if request.GET.get("registration"):
        entries = entries.filter(registration_id=request.GET["registration"])
    return render(request, "sandbox_lms/log.html", {"entries": entries[:200]})


def reverse_url(name: str, **kwargs: Any) -> str:
    return reverse(f"sandbox_lms:{name}", kwargs=kwargs)
