"""The sandbox's Dynamic Registration pages and endpoints (thin: `dynamic_registration` does the work):
the openid configuration, the registration endpoint, and the admin's "Add a tool by link" page."""
from __future__ import annotations

from urllib.parse import urlencode, urlsplit

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from django.db.models import Q

from . import developer_keys, dynamic_registration, request_logging
from .models import Profile, SandboxDeployment, SandboxPlatform, SandboxRegistration
from .protocol import ApiError


def _platform(request: HttpRequest) -> SandboxPlatform | None:
    """The platform named in the query, else the one served at this host, else the first."""
    platform_id = request.GET.get("platform", "")
    if platform_id.isdigit():
        return SandboxPlatform.objects.filter(pk=int(platform_id)).first()
    here = request.build_absolute_uri("/sandbox-lms").rstrip("/")
    return SandboxPlatform.objects.filter(base_url=here).first() or SandboxPlatform.objects.order_by("id").first()


def openid_configuration(request: HttpRequest) -> HttpResponse:
    platform = _platform(request)
    profile = request.GET.get("profile", Profile.GENERIC)
    if platform is None or profile not in Profile.values:
        return JsonResponse({"error": "not_found", "error_description": "No such platform or profile."}, status=404)
    return JsonResponse(dynamic_registration.openid_configuration(platform, profile))


@csrf_exempt
def register(request: HttpRequest) -> HttpResponse:
    """The registration endpoint the tool POSTs its client configuration to."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    registration_id = None
    try:
        done = dynamic_registration.register_dynamically(
            authorization=request.headers.get("Authorization"), body=request.body
        )
        status, body, registration_id = 200, done.answer, done.registration.pk
    except ApiError as error:
        status, body = error.status, error.body
    response = JsonResponse(body, status=status)
    request_logging.log_exchange(
        registration_id=registration_id, kind="dynamic_registration", method="POST", path=request.get_full_path(),
        headers=request.headers, request_body=request.body, status=status, response_body=response.content,
    )
    return response


@csrf_exempt  # a sandbox with no passwords, like its other admin forms
def add_tool(request: HttpRequest) -> HttpResponse:
    """Paste the tool's registration link; the page opens it in a frame with our openid configuration
    and a registration token, and waits for the tool's org.imsglobal.lti.close message."""
    platform = _platform(request)
    frame_url, error, message = "", "", request.GET.get("done", "")[:300]
    profile = request.POST.get("profile", Profile.MOODLE)
    if request.method == "POST" and platform is not None and "json_url" in request.POST:
        # The Canvas way: a developer key from the tool's JSON URL, installed at once (its deployment).
        try:
            registration = developer_keys.create_developer_key(
                platform=platform, data=developer_keys.fetch_tool_json(request.POST["json_url"].strip())
            )
        except developer_keys.DeveloperKeyRefused as refusal:
            error = str(refusal)
        else:
            deployment = developer_keys.install(registration=registration)
            message = (f"Developer key {registration.client_id} is on and installed: give the tool the client ID "
                       f"{registration.client_id} and the deployment ID {deployment.deployment_id}.")
    elif request.method == "POST" and platform is not None:
        tool_link = request.POST.get("tool_link", "").strip()
        parts = urlsplit(tool_link)
        if parts.scheme not in ("http", "https") or not parts.hostname or profile not in Profile.values:
            error = "Paste the tool's registration link (an http or https URL) and pick a profile."
        else:
            query = urlencode({
                "openid_configuration": dynamic_registration.openid_configuration_url(platform, profile),
                "registration_token": dynamic_registration.issue_registration_token(platform, profile),
            })
            frame_url = f"{tool_link}{'&' if parts.query else '?'}{query}"
    return render(request, "sandbox_lms/add_tool.html", {
        "platform": platform,
        "profiles": Profile.choices,
        "profile": profile,
        "frame_url": frame_url,
        "error": error,
        "message": message,
        "registrations": SandboxRegistration.objects.filter(Q(registered_dynamically=True) | ~Q(tool_configuration={}))
        .prefetch_related("deployments").order_by("-id")[:20],
    })


@csrf_exempt
def course_for_tool(request: HttpRequest, pk: int) -> HttpResponse:
    """A new course where this installation is available, with the platform's people in it."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    deployment = get_object_or_404(SandboxDeployment.objects.select_related("registration"), pk=pk)
    title = request.POST.get("title", "").strip()[:200] or f"Course with {deployment.registration.name}"
    course = developer_keys.course_for_tool(deployment=deployment, title=title)
    done = f"Course “{course.title}” created with {course.enrolments.count()} people: act as its instructor from the home page."
    return redirect(f"{reverse('sandbox_lms:add-tool')}?{urlencode({'done': done})}")


@csrf_exempt
def enable(request: HttpRequest, pk: int) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    registration = get_object_or_404(SandboxRegistration, pk=pk)
    dynamic_registration.enable_registration(registration=registration)
    return redirect("sandbox_lms:add-tool")
