"""Public pages of institutions: the Canvas developer key JSON that Canvas's "Enter URL" fetches.

No sign-in (Canvas fetches it itself), GET only, and nothing secret in it: URLs, scopes, placements.
A draft's JSON is served too, since Canvas issues the client ID only after the key is made from it.
"""
from __future__ import annotations

import json
import uuid

from django.http import Http404, HttpRequest, HttpResponse
from django.utils.text import slugify
from django.views.decorators.http import require_GET
from lti_tool.models import LtiRegistration

from . import tool_configuration


@require_GET
def canvas_developer_key_json(request: HttpRequest, registration_uuid: uuid.UUID) -> HttpResponse:
    registration = LtiRegistration.objects.filter(uuid=registration_uuid).first()
    if registration is None:
        raise Http404("No LMS registration has this address.")
    key = tool_configuration.canvas_developer_key(request.build_absolute_uri("/"), registration)
    response = HttpResponse(json.dumps(key, indent=2), content_type="application/json")
    response["Cache-Control"] = "no-cache"  # a new base URL or scope list shows at Canvas's next fetch
    if "download" in request.GET:
        filename = f"canvas-{slugify(registration.name) or 'registration'}.json"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
