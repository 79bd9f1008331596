"""Demo tenants for `make run`."""
from __future__ import annotations

from typing import Any

from .models import Institution


def load_demo(*, base_url: str, stdout: Any) -> None:
    Institution.objects.get_or_create(slug="demo-college", defaults={"name": "Demo Community College"})
    Institution.objects.get_or_create(slug="other-university", defaults={"name": "Other University"})
