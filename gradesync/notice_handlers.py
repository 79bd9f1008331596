"""Platform Notification Service (LTI PNS 1.0): registering our handler for the LMS's context copy
notices. Receiving them is courseware's (the LTI door); what a notice changes is institutions'.

A PUT of `{notice_type, handler}` to the deployment's PNS URL with a service token for the
noticehandlers scope (Canvas: one handler per notice type, re-registering is harmless). Done in the
background after the launch that told us the URL, at most once a day per deployment while it works
and at most every ten minutes while the LMS refuses, so launches stay fast and a refusing LMS is not
asked at every launch.
"""
from __future__ import annotations

import json
import logging

import requests
from django.core.cache import cache
from lti_tool.models import LtiDeployment

from institutions.redaction import redact

from . import ags

logger = logging.getLogger(__name__)

NOTICE_HANDLERS_SCOPE = "https://purl.imsglobal.org/spec/lti/scope/noticehandlers"
CONTEXT_COPY_NOTICE = "LtiContextCopyNotice"
REGISTERED_SECONDS = 24 * 3600
REFUSED_SECONDS = 600
LOCK_SECONDS = 60


def _registered_key(deployment: LtiDeployment) -> str:
    return f"pns-handler:{deployment.pk}"


def _marker(deployment: LtiDeployment, handler_url: str) -> str:
    return f"{deployment.pns_url} {handler_url}"


def wants_registration(deployment: LtiDeployment, handler_url: str) -> bool:
    """Whether our copy notice handler should be (re)registered with this deployment's LMS now."""
    if not (deployment.supports_context_copy_notice and deployment.pns_url):
        return False
    if cache.get(f"{_registered_key(deployment)}:refused") is not None:
        return False
    return cache.get(_registered_key(deployment)) != _marker(deployment, handler_url)


def register_copy_notice_handler(deployment_id: int, handler_url: str) -> str:
    """PUT our LtiContextCopyNotice handler to the deployment's PNS. Idempotent; never raises for
    what the LMS answers. Returns what happened: registered, refused, failed or skipped."""
    deployment = LtiDeployment.objects.select_related("registration").filter(pk=deployment_id).first()
    if deployment is None or not wants_registration(deployment, handler_url):
        return "skipped"
    key = _registered_key(deployment)
    if not cache.add(f"{key}:lock", 1, LOCK_SECONDS):
        return "skipped"  # another worker is at it
    try:
        return _register(deployment, handler_url, key)
    finally:
        cache.delete(f"{key}:lock")


def _register(deployment: LtiDeployment, handler_url: str, key: str) -> str:
    where = deployment.pns_url
    try:
        token = ags.access_token(deployment.registration, (NOTICE_HANDLERS_SCOPE,), deployment_id=deployment.deployment_id)
        response = ags.http_session().put(
            where,
            data=json.dumps({"notice_type": CONTEXT_COPY_NOTICE, "handler": handler_url}),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json"},
            timeout=ags.timeouts(),
        )
    except ags.TokenError as error:
        # The LMS did not grant the scope (a key without "noticehandlers"): ask again later, not at each launch.
        logger.warning("PNS handler for deployment %s not registered: no token for the noticehandlers scope: %s",
                       deployment.deployment_id, error)
        cache.set(f"{key}:refused", 1, REFUSED_SECONDS)
        return "refused"
    except (ags.AgsError, requests.RequestException) as error:
        logger.warning("PNS handler for deployment %s not registered: %s unreachable: %s", deployment.deployment_id, where, error)
        return "failed"
    if 200 <= response.status_code < 300:
        cache.set(key, _marker(deployment, handler_url), REGISTERED_SECONDS)
        logger.info("PNS handler for deployment %s registered at %s", deployment.deployment_id, where)
        return "registered"
    logger.warning("PNS handler for deployment %s refused by %s: %s %s", deployment.deployment_id, where,
                   response.status_code, redact(response.text[:300]))
    cache.set(f"{key}:refused", 1, REFUSED_SECONDS)
    return "refused"
