"""medmesh.portal: the web portal, served by the consent gateway under ``/portal/``.

Patients sign in with Ethereum (EIP-4361), read their records, grant and revoke access, see
who accessed what and add records; providers read what their patients granted them, each
read checked on chain and logged; anyone can look at the network's state. Pages are rendered
on the server (Jinja2, autoescaped), with one stylesheet and no external resources.

    from medmesh.portal import Portal, mount_portal

    mount_portal(app, Portal(gateway, home))   # app: the gateway's FastAPI application
"""

from __future__ import annotations

from medmesh.portal.app import PORTAL_PATH as PORTAL_PATH
from medmesh.portal.app import mount_portal as mount_portal
from medmesh.portal.service import Portal as Portal

__all__ = ["PORTAL_PATH", "Portal", "mount_portal"]
