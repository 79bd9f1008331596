"""Tenancy rules the database enforces, and the onboarding services."""
import datetime

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from lti_tool.models import LtiDeployment, LtiRegistration

from institutions import services
from institutions.models import AuditEntry, Course, DeploymentOwnership, GradePolicy, Institution
from institutions.roles import INTEGRATION, READ_ONLY, SUPPORT
from tests.factories import CourseFactory, DeploymentFactory, InstitutionFactory, RegistrationFactory

pytestmark = pytest.mark.django_db


def test_slug_is_unique(two_institutions):
    with pytest.raises(IntegrityError), transaction.atomic():
        Institution.objects.create(name="Another North", slug="north")


def test_a_deployment_belongs_to_at_most_one_institution(two_institutions):
    north, south = two_institutions
    deployment = DeploymentFactory()
    DeploymentOwnership.objects.create(deployment=deployment, institution=north)
    with pytest.raises(IntegrityError), transaction.atomic():
        DeploymentOwnership.objects.create(deployment=deployment, institution=south)


def test_one_registration_serves_several_institutions_through_their_deployments(two_institutions):
    north, south = two_institutions
    canvas = RegistrationFactory()
    DeploymentOwnership.objects.create(deployment=DeploymentFactory(registration=canvas), institution=north)
    DeploymentOwnership.objects.create(deployment=DeploymentFactory(registration=canvas), institution=south)
    owners = set(canvas.deployments.values_list("ownership__institution__slug", flat=True))
    assert owners == {"north", "south"}


def test_registration_is_unique_per_issuer_and_client_id():
    RegistrationFactory(client_id="42")
    with pytest.raises(IntegrityError), transaction.atomic():
        RegistrationFactory(client_id="42")


def test_course_cannot_end_before_it_starts(two_institutions):
    course = CourseFactory(institution=two_institutions[0])
    now = timezone.now()
    course.starts_at, course.ends_at = now, now - datetime.timedelta(days=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        course.save()


def test_grade_policy_must_be_a_known_value(two_institutions):
    with pytest.raises(IntegrityError), transaction.atomic():
        Institution.objects.filter(pk=two_institutions[0].pk).update(grade_policy="lowest")


def test_institutions_default_to_the_highest_grade_policy():
    assert InstitutionFactory().grade_policy == GradePolicy.HIGHEST


@pytest.mark.parametrize("role,allowed", [(SUPPORT, True), (INTEGRATION, False), (READ_ONLY, False)])
def test_only_support_may_change_the_grade_policy_through_the_service(two_institutions, staff_user, role, allowed):
    north, _ = two_institutions
    user = staff_user(role)
    if allowed:
        assert services.change_grade_policy(institution=north, policy=GradePolicy.MOST_RECENT, acting_user=user)
        north.refresh_from_db()
        assert north.grade_policy == GradePolicy.MOST_RECENT
        entry = AuditEntry.objects.get(action="grade_policy.changed")
        assert entry.actor == user and entry.institution == north
        assert entry.changes == {"grade_policy": ["Highest attempt", "Most recent attempt"]}
    else:
        with pytest.raises(PermissionDenied):
            services.change_grade_policy(institution=north, policy=GradePolicy.MOST_RECENT, acting_user=user)
        north.refresh_from_db()
        assert north.grade_policy == GradePolicy.HIGHEST
        assert not AuditEntry.objects.exists()


def test_assigning_a_deployment_owned_elsewhere_is_refused_and_changes_nothing(two_institutions, staff_user):
    north, south = two_institutions
    user = staff_user(INTEGRATION)
    deployment = DeploymentFactory(is_active=False)
    services.assign_deployment(deployment=deployment, institution=north, activate=True, acting_user=user)
    deployment.refresh_from_db()
    assert deployment.is_active and deployment.ownership.institution == north
    with pytest.raises(ValidationError, match="already belongs to North College"):
        services.assign_deployment(deployment=deployment, institution=south, activate=True, acting_user=user)
    assert DeploymentOwnership.objects.get(deployment=deployment).institution == north
    entry = AuditEntry.objects.get(action="deployment.assigned")
    assert entry.changes == {"institution": [None, "North College"], "is_active": [False, True]}


def test_staff_groups_exist_after_migrate_with_their_permissions():
    from django.contrib.auth.models import Group

    support = Group.objects.get(name=SUPPORT)
    integration = Group.objects.get(name=INTEGRATION)
    read_only = Group.objects.get(name=READ_ONLY)
    assert support.permissions.filter(codename="change_grade_policy").exists()
    assert not integration.permissions.filter(codename="change_grade_policy").exists()
    assert integration.permissions.filter(codename="change_ltiregistration").exists()
    assert not read_only.permissions.exclude(codename__startswith="view_").exists()
    assert read_only.permissions.filter(codename="view_institution").exists()
