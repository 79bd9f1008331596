"""Factories that keep one tenant consistent: a course's deployment belongs to its institution."""
from __future__ import annotations

import factory
from factory.django import DjangoModelFactory
from lti_tool.models import LtiContext, LtiDeployment, LtiRegistration

from institutions.models import Course, DeploymentOwnership, Institution, LmsFamily, RegistrationProfile


class InstitutionFactory(DjangoModelFactory):
    class Meta:
        model = Institution
        django_get_or_create = ["slug"]

    name = factory.Sequence(lambda n: f"Institution {n}")
    slug = factory.Sequence(lambda n: f"institution-{n}")


class RegistrationFactory(DjangoModelFactory):
    class Meta:
        model = LtiRegistration
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"LMS {n}")
    issuer = "https://canvas.instructure.com"
    client_id = factory.Sequence(lambda n: f"1000000000{n:04d}")
    auth_url = "https://sso.canvaslms.com/api/lti/authorize_redirect"
    token_url = "https://sso.canvaslms.com/login/oauth2/token"
    keyset_url = "https://sso.canvaslms.com/api/lti/security/jwks"
    profile = factory.RelatedFactory(
        "tests.factories.RegistrationProfileFactory", factory_related_name="registration"
    )


class RegistrationProfileFactory(DjangoModelFactory):
    class Meta:
        model = RegistrationProfile

    lms_family = LmsFamily.CANVAS


class DeploymentFactory(DjangoModelFactory):
    class Meta:
        model = LtiDeployment

    registration = factory.SubFactory(RegistrationFactory)
    deployment_id = factory.Sequence(lambda n: f"deployment-{n}")
    is_active = True


class OwnedDeploymentFactory(DjangoModelFactory):
    """A deployment owned by an institution (DeploymentOwnership)."""

    class Meta:
        model = DeploymentOwnership

    deployment = factory.SubFactory(DeploymentFactory)
    institution = factory.SubFactory(InstitutionFactory)


class ContextFactory(DjangoModelFactory):
    class Meta:
        model = LtiContext

    deployment = factory.SubFactory(DeploymentFactory)
    id_on_platform = factory.Sequence(lambda n: f"context-{n}")
    title = factory.Sequence(lambda n: f"Course {n}")


class CourseFactory(DjangoModelFactory):
    class Meta:
        model = Course

    institution = factory.SubFactory(InstitutionFactory)
    deployment = factory.LazyAttribute(
        lambda o: OwnedDeploymentFactory(institution=o.institution).deployment
    )
    context = factory.LazyAttribute(lambda o: ContextFactory(deployment=o.deployment))
    title = factory.LazyAttribute(lambda o: o.context.title)
