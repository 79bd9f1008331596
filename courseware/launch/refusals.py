"""A launch or login we do not accept, with a reason a person can act on and an HTTP status."""
from __future__ import annotations


class LaunchRefused(Exception):
    """A launch we do not accept. `return_url` is set only once the token's signature is verified."""

    def __init__(self, reason: str, *, status: int = 400, return_url: str = "", pending: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.return_url = return_url
        self.pending = pending
