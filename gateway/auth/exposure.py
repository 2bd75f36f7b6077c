"""What the gateway says at start about who can reach what (README "Security")."""

from __future__ import annotations

import logging

from gateway.auth.admin import loopback_host
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway.auth")


def log_exposure(settings: GatewaySettings, host: str) -> None:
    auth = settings.auth
    if not auth.api_keys and not loopback_host(host.encode()):
        log.warning("listening on %s with no auth.api_keys: ANYONE WHO CAN REACH THIS PORT CAN USE EVERY MODEL "
                    "(set auth.api_keys, or listen on 127.0.0.1)", host)
    if auth.admin_keys:
        log.info("admin endpoints: admin keys only")
    elif auth.api_keys:
        log.info("admin endpoints: disabled (auth.api_keys is set, auth.admin_keys is not)")
    else:
        log.info("admin endpoints: open to loopback clients only (no keys configured)")
