"""Gateways' broker accounts: mosquitto's dynamic-security plugin, driven over MQTT.

Why dynamic security and not a password file plus an ACL file and a SIGHUP: deleting a client
in dynsec disconnects its live session at once (a reload of a password file does not drop a
connected client, so a retired gateway would stay connected until it reconnects); changes are
applied in the broker atomically, with no file to write, no pid file and no signal, and they work
against a broker on another host. The registry sends the plugin's JSON commands on
``$CONTROL/dynamic-security/v1`` through its downlink session, as ``mosquitto_ctrl`` would.

Each gateway gets a client named after its id (its MQTT username) with a role of its own that
allows publishing and subscribing only under ``P/gw/<id>/#``; with the plugin's default ACL
access (publishing denied) nothing else is allowed. The registry's own user gets the
``gridwatch-central`` role: ``P/gw/#`` and ``P/platform/#``.
"""

from __future__ import annotations

import logging
from typing import Any

from device_registry.errors import BrokerUnavailable
from device_registry.inventory.downlink import Downlink

logger = logging.getLogger(__name__)

CENTRAL_ROLE = "gridwatch-central"
_ACL_TYPES = ("publishClientSend", "publishClientReceive", "subscribePattern", "unsubscribePattern")
_TOLERATED = ("already", "not found")


def role_name(gateway: str) -> str:
    return f"gw-{gateway}"


def acls(*topics: str) -> list[dict[str, Any]]:
    return [{"acltype": t, "topic": topic, "allow": True} for topic in topics for t in _ACL_TYPES]


def grant_commands(prefix: str, gateway: str, password: str) -> list[dict[str, Any]]:
    """Create the gateway's role and a fresh client (an earlier one, from a registration that
    failed half-way, is deleted first: its password is not the one being issued)."""
    role = role_name(gateway)
    return [
        {"command": "createRole", "rolename": role, "acls": acls(f"{prefix}/gw/{gateway}/#")},
        {"command": "deleteClient", "username": gateway},
        {"command": "createClient", "username": gateway, "password": password,
         "roles": [{"rolename": role}]},
    ]  # fmt: skip


def revoke_commands(gateway: str) -> list[dict[str, Any]]:
    # deleting the client disconnects its session in the same moment
    return [
        {"command": "deleteClient", "username": gateway},
        {"command": "deleteRole", "rolename": role_name(gateway)},
    ]


def central_commands(prefix: str, username: str) -> list[dict[str, Any]]:
    return [
        {"command": "createRole", "rolename": CENTRAL_ROLE,
         "acls": acls(f"{prefix}/gw/#", f"{prefix}/platform/#")},
        {"command": "addClientRole", "username": username, "rolename": CENTRAL_ROLE},
    ]  # fmt: skip


def failures(commands: list[dict[str, Any]], responses: list[dict[str, Any]]) -> list[str]:
    """The errors that matter (an idempotent re-create reports 'already exists': fine)."""
    out = []
    for cmd, resp in zip(commands, responses, strict=True):
        error = str(resp.get("error", ""))
        if error and not any(t in error.lower() for t in _TOLERATED):
            out.append(f"{cmd['command']}: {error}")
    return out


class DynsecAccess:
    """``BrokerAccess`` through the dynamic-security plugin."""

    def __init__(self, downlink: Downlink, prefix: str) -> None:
        self.downlink, self.prefix = downlink, prefix

    async def _run(self, commands: list[dict[str, Any]], what: str, setup: bool = False) -> None:
        responses = await self.downlink.control(commands, setup)
        errors = failures(commands, responses)
        if errors:
            raise BrokerUnavailable(f"the broker refused to {what}: {'; '.join(errors)}")

    async def grant(self, gateway: str, password: str) -> None:
        await self._run(grant_commands(self.prefix, gateway, password), f"admit {gateway}")
        logger.info(
            "broker: gateway %s admitted, confined to %s/gw/%s/#", gateway, self.prefix, gateway
        )

    async def revoke(self, gateway: str) -> None:
        await self._run(revoke_commands(gateway), f"revoke {gateway}")
        logger.info("broker: gateway %s revoked and disconnected", gateway)

    async def ensure_central(self, username: str) -> None:
        """Give the registry's own user the central role, only if it lacks it: a role change
        makes the broker drop that user's sessions (ours included)."""
        [found] = await self.downlink.control(
            [{"command": "getClient", "username": username}], setup=True
        )
        roles = {
            r.get("rolename") for r in found.get("data", {}).get("client", {}).get("roles", [])
        }
        if CENTRAL_ROLE not in roles:
            await self._run(
                central_commands(self.prefix, username), f"give {username} its role", setup=True
            )
            logger.info("broker: %s given the %s role", username, CENTRAL_ROLE)


class NoBrokerAccess:
    """No broker control configured (e.g. the embedded demo broker): credentials are issued and
    recorded, but the broker does not check them. Said once, loudly."""

    def __init__(self) -> None:
        self._warned = False

    def _warn(self) -> None:
        if not self._warned:
            logger.warning("no broker control configured (--broker-admin-user): gateways are "
                           "registered but the broker does not confine or revoke them")  # fmt: skip
            self._warned = True

    async def grant(self, gateway: str, password: str) -> None:
        self._warn()

    async def revoke(self, gateway: str) -> None:
        self._warn()
