"""The sandbox's Dynamic Registration pages and endpoints (thin: `dynamic_registration` does the work):
the openid configuration, the registration endpoint, and the admin's "Add a tool by link" page."""
from __future__ import annotations

from urllib.parse import urlencode, urlsplit

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_exempt

from . import dynamic_registration, request_logging
from .models import Profile, SandboxPlatform, SandboxRegistration
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
    frame_url, error = "", ""
    profile = request.POST.get("profile", Profile.MOODLE)
    if request.method == "POST" and platform is not None:
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
        "registrations": SandboxRegistration.objects.filter(registered_dynamically=True).order_by("-id")[:20],
    })


@csrf_exempt
def enable(request: HttpRequest, pk: int) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    registration = get_object_or_404(SandboxRegistration, pk=pk)
    dynamic_registration.enable_registration(registration=registration)
    return redirect("sandbox_lms:add-tool")
