"""Courseware factories: catalog items, placements, links and launches that stay in one tenant.

A link, placement or launch takes its deployment from its course, and its LTI user and resource
link from the course's registration and context, so one course never mixes two institutions.
"""
from __future__ import annotations

from decimal import Decimal

import factory
from factory.django import DjangoModelFactory
from lti_tool.models import LtiLineItem, LtiResourceLink, LtiUser

from courseware.models import Activity, ActivityKind, ActivityLink, Launch, LaunchRole, Placement, Question

from .factories import CourseFactory


class ActivityFactory(DjangoModelFactory):
    class Meta:
        model = Activity
        django_get_or_create = ["slug"]

    slug = factory.Sequence(lambda n: f"activity-{n}")
    title = factory.Sequence(lambda n: f"Activity {n}")
    kind = ActivityKind.CUSTOM_QUIZ
    default_points = Decimal("10")
    body = "Read this carefully."


class QuestionFactory(DjangoModelFactory):
    """A multiple-choice question whose right answer is the first choice."""

    class Meta:
        model = Question

    activity = factory.SubFactory(ActivityFactory)
    position = factory.Sequence(lambda n: n)
    prompt = factory.Sequence(lambda n: f"Question {n}?")
    choices = ["Right", "Wrong", "Also wrong"]
    answer = 0


class LtiUserFactory(DjangoModelFactory):
    class Meta:
        model = LtiUser

    registration = factory.LazyAttribute(lambda o: CourseFactory().deployment.registration)
    sub = factory.Sequence(lambda n: f"user-{n}")
    name = factory.Sequence(lambda n: f"Learner {n}")


class ResourceLinkFactory(DjangoModelFactory):
    class Meta:
        model = LtiResourceLink

    context = factory.LazyAttribute(lambda o: CourseFactory().context)
    id_on_platform = factory.Sequence(lambda n: f"resource-link-{n}")
    title = factory.Sequence(lambda n: f"Link {n}")


class PlacementFactory(DjangoModelFactory):
    class Meta:
        model = Placement

    course = factory.SubFactory(CourseFactory)
    activity = factory.SubFactory(ActivityFactory)
    deployment = factory.LazyAttribute(lambda o: o.course.deployment)
    graded = True
    score_maximum = factory.LazyAttribute(lambda o: Decimal("10") if o.graded else None)


class ActivityLinkFactory(DjangoModelFactory):
    """A resource link of the course bound to an activity, placed there; graded ones have their line item,
    as the LMS names it at launch."""

    class Meta:
        model = ActivityLink
        skip_postgeneration_save = True

    course = factory.SubFactory(CourseFactory)
    activity = factory.SubFactory(ActivityFactory)
    resource_link = factory.LazyAttribute(lambda o: ResourceLinkFactory(context=o.course.context))
    placement = factory.LazyAttribute(lambda o: PlacementFactory(course=o.course, activity=o.activity, graded=o.graded))
    graded = True

    @factory.post_generation
    def line_item(self, create, extracted, **kwargs):
        if create and self.graded:
            LtiLineItem.objects.create(
                context=self.course.context,
                resource_link=self.resource_link,
                url=f"https://lms.example.edu/api/lti/courses/{self.course.context_id}/line_items/{self.pk}",
                label=self.activity.title,
                maximum_score=float(self.placement.score_maximum if self.placement else self.activity.default_points),
                resource_id=str(self.activity_id),
            )


class LaunchFactory(DjangoModelFactory):
    """A verified resource-link launch of a learner in a course."""

    class Meta:
        model = Launch

    course = factory.SubFactory(CourseFactory)
    deployment = factory.LazyAttribute(lambda o: o.course.deployment)
    lti_user = factory.LazyAttribute(lambda o: LtiUserFactory(registration=o.course.deployment.registration))
    role = LaunchRole.LEARNER
    roles = factory.LazyAttribute(
        lambda o: ["http://purl.imsglobal.org/vocab/lis/v2/membership#"
                   + {"instructor": "Instructor"}.get(o.role, "Learner")]
    )
    message_type = "LtiResourceLinkRequest"
