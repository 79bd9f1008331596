"""The platform's notice handler endpoint (PNS 1.0): thin, over `sandbox_lms.notices`."""
from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from . import notices, request_logging, tokens
from .protocol import ApiError


@csrf_exempt
def notice_handlers(request: HttpRequest, pk: int) -> HttpResponse:
    """GET the tool's notice handlers, PUT one (Bearer token with the noticehandlers scope)."""
    registration_id = None  # the token's tool, once known (the URL's may not exist)
    try:
        if request.method not in ("GET", "PUT"):
            raise ApiError(405, {"errors": [{"message": "GET or PUT"}]}, headers={"Allow": "GET, PUT"})
        info = tokens.authenticate(request.headers.get("Authorization"))
        registration_id = info.registration_id
        if request.method == "PUT":
            answer = notices.register_handler(registration_pk=pk, info=info, body=request.body)
        else:
            answer = notices.notice_handlers(registration_pk=pk, info=info)
        status, body, content_type, headers = 200, json.dumps(answer), "application/json", {}
    except ApiError as error:
        status, content_type, headers = error.status, error.content_type, error.headers
        body = error.body if isinstance(error.body, str) else json.dumps(error.body)
    response = HttpResponse(body, status=status, content_type=content_type)
    for name, value in headers.items():
        response[name] = value
    request_logging.log_exchange(
        registration_id=registration_id, kind="notice_handlers", method=request.method, path=request.get_full_path(),
        headers=request.headers, request_body=request.body, status=status, response_body=body,
    )
    return response
