"""Fixtures shared by the whole suite. Tests always have two institutions."""
from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache

from institutions.roles import INTEGRATION, READ_ONLY, SUPPORT

from .factories import InstitutionFactory


@pytest.fixture(autouse=True)
def _clear_cache():
    cache.clear()
    yield


@pytest.fixture
def two_institutions():
    return InstitutionFactory(name="North College", slug="north"), InstitutionFactory(name="South University", slug="south")


@pytest.fixture
def staff_user(django_user_model):
    """Make a staff user holding one role group: staff_user(SUPPORT)."""

    def make(role: str | None, username: str | None = None):
        user = django_user_model.objects.create_user(
            username=username or f"{(role or 'none').lower().replace('-', '')}-staff", password="pw", is_staff=True
        )
        if role:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def client_for(client, staff_user):
    """A test client logged in as a staff member of one role."""

    def make(role: str | None):
        user = staff_user(role)
        client.force_login(user)
        client.user = user
        return client

    return make


ROLES = [SUPPORT, INTEGRATION, READ_ONLY]
