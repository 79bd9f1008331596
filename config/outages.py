"""A dependency that does not answer is an outage, not a bug: the answer is 503 with Retry-After and a
sentence a person can act on, not a 500. Seen in the multi-host drill: launches during a PostgreSQL
restart answered 500.

Django calls `handler500` for any exception no view or middleware handled, with the exception still
being handled (sys.exc_info); this one tells an outage of the database, the cache or the broker from
a real error, which keeps Django's own 500 page.
"""
from __future__ import annotations

import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.views import defaults

RETRY_AFTER_SECONDS = 10


def _outage_errors() -> tuple[type[BaseException], ...]:
    import kombu.exceptions
    import redis.exceptions

    return (OperationalError, InterfaceError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
            kombu.exceptions.OperationalError)


def is_outage(error: BaseException | None) -> bool:
    return isinstance(error, _outage_errors())


def server_error(request: HttpRequest) -> HttpResponse:
    if not is_outage(sys.exc_info()[1]):
        return defaults.server_error(request)
    response = HttpResponse(
        "The service is briefly unavailable: its database or cache did not answer. Try again in a few seconds.\n",
        status=503, content_type="text/plain; charset=utf-8",
    )
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
