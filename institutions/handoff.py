"""The hand-off page per LMS: where each value of the tool goes in that LMS, and which switches to set
(the admin's tool configuration page renders `handoffs`). Values come from `tool_configuration`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from django.conf import settings
from lti_tool.models import LtiRegistration

from .models import LmsFamily
from .tool_configuration import TOOL_SCOPES, custom_parameters_text, tool_urls


@dataclass(frozen=True)
class HandoffStep:
    """One field or switch in the LMS: its label there, and what to enter or choose.

    `copy` marks a value to paste (a URL, a JSON, parameters); a switch to set is not copied.
    """

    label: str
    value: str
    copy: bool = True
    note: str = ""


@dataclass(frozen=True)
class Handoff:
    """What one LMS family's admin does with this registration, in the LMS's own words."""

    family: str
    title: str
    where: str
    steps: list[HandoffStep] = field(default_factory=list)
    afterwards: str = ""
    verified: bool = True  # False: the labels come from vendor docs we could not check on a real install


def handoffs(base_url: str, registration: LtiRegistration, lms_family: str) -> list[Handoff]:
    """Every family's hand-off for this registration, the registration's own family first."""
    urls = tool_urls(base_url, registration)
    title = settings.TOOL_TITLE
    host = urlsplit(urls["launch"]).hostname or ""
    scopes = "\n".join(TOOL_SCOPES)
    pages = [
        Handoff(
            LmsFamily.MOODLE, "Moodle",
            "Site administration → Plugins → Activity modules → External tool → Manage tools → "
            "\"configure a tool manually\"",
            [
                HandoffStep("Tool name", title),
                HandoffStep("Tool URL", urls["launch"]),
                HandoffStep("LTI version", "LTI 1.3", copy=False),
                HandoffStep("Public key type", "Keyset URL", copy=False),
                HandoffStep("Public keyset", urls["jwks"]),
                HandoffStep("Initiate login URL", urls["login"]),
                HandoffStep("Redirection URI(s)", urls["redirect"]),
                HandoffStep("Custom parameters", custom_parameters_text(LmsFamily.MOODLE),
                            note="One name=value per line: course dates and copy history."),
                HandoffStep("Tool configuration usage", "Show in activity chooser and as a preconfigured tool", copy=False),
                HandoffStep("Supports Deep Linking (Content-Item Message)", "ticked", copy=False),
                HandoffStep("Content Selection URL", urls["deep_linking"]),
                HandoffStep("Services → IMS LTI Assignment and Grade Services",
                            "Use this service for grade sync and column management", copy=False),
                HandoffStep("Services → IMS LTI Names and Role Provisioning",
                            "Use this service to retrieve members' information as per privacy settings", copy=False),
                HandoffStep("Privacy → Share launcher's name with tool", "Always", copy=False),
                HandoffStep("Privacy → Share launcher's email with tool", "Always", copy=False),
                HandoffStep("Privacy → Accept grades from the tool", "Always", copy=False),
            ],
            "After \"Save changes\", the tool's \"View configuration details\" (list icon in Manage tools) shows "
            "Platform ID, Client ID, Deployment ID, Public keyset URL, Access token URL and Authentication request URL: "
            "they go into this registration (issuer = Platform ID) and its deployment.",
        ),
        Handoff(
            LmsFamily.CANVAS, "Canvas",
            "Admin → Developer Keys → + Developer Key → + LTI Key",
            [
                HandoffStep("Method: Enter URL → JSON URL", urls["canvas_json"],
                            note="Canvas fetches this page itself; or choose \"Paste JSON\" and paste the JSON below "
                                 "(also downloadable)."),
                HandoffStep("Redirect URIs", urls["redirect"]),
                HandoffStep("Placements (in the JSON)",
                            "Assignment Selection, Link Selection (deep linking); Course Navigation (instructor tools, "
                            "teachers and admins only)", copy=False),
                HandoffStep("LTI Advantage Services / scopes (in the JSON)", scopes, copy=False,
                            note="Leave them all on: grade sync needs line items, scores and results."),
                HandoffStep("After saving: State", "ON", copy=False,
                            note="A key left OFF refuses every launch."),
                HandoffStep("Client ID", "the key's number in the Details column", copy=False,
                            note="Type it into this registration's client ID."),
                HandoffStep("Admin (or course) → Settings → Apps → View App Configurations → + App",
                            "Configuration Type: By Client ID → the key's number → Install", copy=False),
                HandoffStep("The app's cog → Deployment Id", "type it as this registration's deployment", copy=False),
            ],
            "Issuer https://canvas.instructure.com (every hosted school) and the Canvas preset's endpoints.",
        ),
        Handoff(
            LmsFamily.BLACKBOARD, "Blackboard Learn",
            "The vendor, once: Anthology developer portal (developer.blackboard.com) → My Applications → "
            "Register LTI 1.3 Tool. Each school: System Admin → Integrations → LTI Tool Providers → "
            "Register LTI 1.3/Advantage Tool",
            [
                HandoffStep("Portal: Domain(s)", host),
                HandoffStep("Portal: Login Initiation URL", urls["login"]),
                HandoffStep("Portal: Tool Redirect URL(s)", urls["redirect"]),
                HandoffStep("Portal: Tool JWKS URL", urls["jwks"]),
                HandoffStep("Portal: Custom Parameters", custom_parameters_text(LmsFamily.BLACKBOARD)),
                HandoffStep("School: Client ID", "the portal's Application ID (this registration's client ID)", copy=False),
                HandoffStep("School: Tool Status", "Approved", copy=False),
                HandoffStep("School: User Fields to Send", "Role in Course, Name, Email Address", copy=False),
                HandoffStep("School: Allow grade service access", "Yes", copy=False),
                HandoffStep("School: Allow Membership Service access", "Yes", copy=False),
            ],
            "The school's Blackboard shows a Deployment ID for the tool: it is this registration's deployment for "
            "that school. Deleting the integration in Blackboard destroys its links: redeploy with the same client ID.",
            verified=False,
        ),
        Handoff(
            LmsFamily.D2L, "D2L Brightspace",
            "Admin Tools → Manage Extensibility → LTI Advantage → Register Tool (Standard)",
            [
                HandoffStep("Domain", f"{urlsplit(urls['launch']).scheme}://{host}"),
                HandoffStep("Redirect URLs", urls["redirect"]),
                HandoffStep("OpenID Connect Login URL", urls["login"]),
                HandoffStep("Target Link URI", urls["launch"]),
                HandoffStep("Keyset URL", urls["jwks"], note="Brightspace takes only a key set URL, never a pasted key."),
                HandoffStep("Extensions", "Assignment and Grade Services, Deep Linking, Names and Role Provisioning Services",
                            copy=False),
                HandoffStep("Roles → Send Institution Role", "optional", copy=False),
                HandoffStep("Deployment → Security Settings", "Name, Email, Org Unit Information, Link Information",
                            copy=False),
                HandoffStep("Deployment → Custom parameters", custom_parameters_text(LmsFamily.D2L)),
                HandoffStep("Deployment → Enabled", "ticked (a new registration is disabled)", copy=False),
            ],
            "After registering, Brightspace shows Client Id, Issuer, OpenID Connect Authentication Endpoint, Brightspace "
            "OAuth2 Access Token URL, Brightspace Keyset URL and Brightspace OAuth2 Audience: they go into this "
            "registration. View Deployments → New Deployment gives the Deployment Id.",
        ),
        Handoff(
            LmsFamily.SCHOOLOGY, "Schoology",
            "The LTI 1.3 app's configuration in Schoology (the vendor's app, installed by each school)",
            [
                HandoffStep("Domain", host),
                HandoffStep("OIDC login (initiation) URL", urls["login"]),
                HandoffStep("Redirect URL(s)", urls["redirect"]),
                HandoffStep("Target link / launch URL", urls["launch"]),
                HandoffStep("Public key set (JWKS) URL", urls["jwks"]),
                HandoffStep("Deep linking", urls["deep_linking"],
                            note="Schoology offers deep linking only from \"Add Materials\"."),
                HandoffStep("Services", "Assignment and Grade Services, Names and Role Provisioning", copy=False),
                HandoffStep("Custom parameters", custom_parameters_text(LmsFamily.SCHOOLOGY)),
            ],
            "Schoology gives the Client ID (issuer https://schoology.schoology.com, the Schoology preset's endpoints); "
            "each school's installation has its Deployment ID.",
            verified=False,
        ),
        Handoff(
            LmsFamily.SAKAI, "Sakai",
            "Administration Workspace → External Tools → Install LTI 1.x Tool (LTI 1.3 on)",
            [
                HandoffStep("Launch URL", urls["launch"]),
                HandoffStep("OIDC Login (initiation) URL", urls["login"]),
                HandoffStep("Redirect URL(s)", urls["redirect"]),
                HandoffStep("Tool keyset URL", urls["jwks"]),
                HandoffStep("Allow External Tool to return grades", "ticked", copy=False),
                HandoffStep("Allow External Tool to create grade columns", "ticked", copy=False),
                HandoffStep("Deep Linking / Content Item selection", urls["deep_linking"]),
                HandoffStep("Send names and email", "ticked", copy=False),
                HandoffStep("Custom parameters", custom_parameters_text(LmsFamily.SAKAI)),
            ],
            "Sakai shows the tool's LTI 1.3 platform information: Issuer, OIDC Authentication URL, Token URL, Keyset URL, "
            "Client ID and Deployment ID go into this registration.",
            verified=False,
        ),
    ]
    return sorted(pages, key=lambda page: page.family != lms_family)  # stable: the others keep their order
