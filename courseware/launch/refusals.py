"""A launch or login we do not accept, with a reason a person can act on and an HTTP status."""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest, QueryDict
from django.http.multipartparser import MultiPartParserError


class LaunchRefused(Exception):
    """A launch we do not accept. `return_url` is set only once the token's signature is verified."""

    def __init__(self, reason: str, *, status: int = 400, return_url: str = "", pending: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.return_url = return_url
        self.pending = pending


def posted_form(request: HttpRequest) -> QueryDict:
    """The POSTed form of an LMS's login or launch; a body Django cannot parse is a refusal."""
    try:
        if request.content_type == "application/x-www-form-urlencoded":
            # Django would read a body that is not in its charset as ISO-8859-1, silently.
            try:
                request.body.decode(request.encoding or settings.DEFAULT_CHARSET)
            except (UnicodeDecodeError, LookupError):
                raise LaunchRefused("The request from the LMS is not valid UTF-8 text; it could not be decoded.")
        return request.POST
    except RequestDataTooBig:
        raise LaunchRefused("The request from the LMS is too large for this tool.", status=413)
    except (MultiPartParserError, SuspiciousOperation) as error:
        raise LaunchRefused(f"The request from the LMS could not be read as a form ({error}).")


def shown(value: object, limit: int = 80) -> str:
    """A value from the LMS as it may appear in a reason: quoted, and cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
