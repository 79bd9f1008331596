"""An independent LTI 1.3 tool built with pylti1p3, served beside the project for conformance tests.

`tool_urls` below is the project's urls plus this tool at /pytool/; a test points ROOT_URLCONF
at it and sets `TOOL.conf` to a pylti1p3 ToolConfDict for the seeded platform.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from pylti1p3.contrib.django import DjangoMessageLaunch, DjangoOIDCLogin
from pylti1p3.deep_link_resource import DeepLinkResource
from pylti1p3.grade import Grade
from pylti1p3.lineitem import LineItem
from pylti1p3.tool_config import ToolConfDict

from config.urls import urlpatterns as project_urlpatterns


def _key_pair() -> tuple[str, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private_pem, public_pem


PRIVATE_PEM, PUBLIC_PEM = _key_pair()


@dataclass
class ToolState:
    conf: ToolConfDict | None = None
    issuer: str = ""
    client_id: str = ""
    deep_link_items: list[dict[str, Any]] = field(default_factory=list)


TOOL = ToolState()


def configure(*, issuer: str, client_id: str, auth_url: str, token_url: str, jwks_url: str, deployment_id: str) -> None:
    conf = ToolConfDict({
        issuer: [{
            "default": True,
            "client_id": client_id,
            "auth_login_url": auth_url,
            "auth_token_url": token_url,
            "key_set_url": jwks_url,
            "key_set": None,
            "deployment_ids": [deployment_id],
        }]
    })
    conf.set_private_key(issuer, PRIVATE_PEM, client_id=client_id)
    conf.set_public_key(issuer, PUBLIC_PEM, client_id=client_id)
    TOOL.conf, TOOL.issuer, TOOL.client_id = conf, issuer, client_id


@csrf_exempt
def login(request):
    oidc = DjangoOIDCLogin(request, TOOL.conf)
    target = request.POST.get("target_link_uri") or request.GET.get("target_link_uri")
    return oidc.redirect(target)


@csrf_exempt
def launch(request):
    message_launch = DjangoMessageLaunch(request, TOOL.conf)
    data = message_launch.get_launch_data()  # validates: signature by the platform's JWKS, nonce, state...
    if message_launch.is_deep_link_launch():
        resources = []
        for item in TOOL.deep_link_items:
            resource = DeepLinkResource().set_url(item["url"]).set_title(item["title"])
            if "line_item" in item:
                spec = item["line_item"]
                resource.set_lineitem(
                    LineItem().set_score_maximum(spec["scoreMaximum"]).set_label(spec["label"])
                    .set_resource_id(spec["resourceId"]).set_tag(spec["tag"])
                )
            resources.append(resource)
        return HttpResponse(message_launch.get_deep_link().output_response_form(resources))
    answer: dict[str, Any] = {"launch": data}
    if request.POST.get("grade"):
        ags = message_launch.get_ags()
        grade = (
            Grade().set_score_given(float(request.POST["grade"])).set_score_maximum(100)
            .set_timestamp(request.POST["timestamp"]).set_activity_progress("Completed")
            .set_grading_progress("FullyGraded").set_user_id(data["sub"])
        )
        answer["grade"] = ags.put_grade(grade)["body"]
    return JsonResponse(json.loads(json.dumps(answer, default=str)))


def jwks(request):
    return JsonResponse(TOOL.conf.get_jwks(TOOL.issuer, TOOL.client_id))


urlpatterns = [
    *project_urlpatterns,
    path("pytool/login/", login),
    path("pytool/launch/", launch),
    path("pytool/jwks/", jwks),
]
