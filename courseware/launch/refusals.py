"""A launch or login we do not accept, with a reason a person can act on and an HTTP status, and the
text checks the door makes of whatever an LMS sends (control characters, web addresses)."""
from __future__ import annotations

import unicodedata
from urllib.parse import urlsplit

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


def has_unsafe_characters(value: str) -> bool:
    """Control characters (NUL breaks PostgreSQL), or unpaired surrogates a JSON token can carry (not UTF-8)."""
    return any(unicodedata.category(char) in ("Cc", "Cs") for char in value)


def is_http_url(value: str) -> bool:
    """An absolute http(s) URL with a host, without control characters or white space."""
    if has_unsafe_characters(value) or any(char.isspace() for char in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unclosed IPv6 bracket: "http://[::1"
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)
