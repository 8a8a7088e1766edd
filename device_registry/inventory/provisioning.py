"""Gateways' broker accounts: mosquitto's dynamic-security plugin, driven over MQTT.

Why dynamic security and not a password file plus an ACL file and a SIGHUP: deleting a client
in dynsec disconnects its live session at once (a reload of a password file does not drop a
connected client, so a retired gateway would stay connected until it reconnects); changes are
applied in the broker atomically, with no file to write, no pid file and no signal, and they work
against a broker on another host. The registry sends the plugin's JSON commands on
``$CONTROL/dynamic-security/v1`` through its downlink session, as ``mosquitto_ctrl`` would.

The namespace the registry owns (docs/security.md): gateway ``G`` gets the client (MQTT
username) ``gw-G``, a member of the group ``gridwatch-gateways``, bound to the client id
``gridwatch-edge-G`` (the broker refuses that username with any other id, so a gateway cannot
take over another session, the bridge's included), with the role ``gw-G`` that allows
publishing and subscribing only under ``P/gw/G/#``; with the plugin's default ACL access
(publishing denied) nothing else is allowed. The installer only chooses ``G``, never a whole
account name, so the centre's own accounts are out of reach; and before it deletes or changes an
account the registry checks it made it (group membership), answering 409 when the name belongs to
someone else.

Gateways registered before this namespace (their config names no username) keep their account
``G``: the registry still rotates and retires it when it is exactly what an older registry made
(no groups, the single role ``gw-G``); a rotation re-creates it with the client-id binding and the
group, so it is the registry's from then on. The registry's own user gets the
``gridwatch-central`` role: ``P/gw/#`` and ``P/platform/#``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from device_registry.errors import BrokerUnavailable, Conflict

if TYPE_CHECKING:
    from device_registry.inventory.downlink import Downlink

logger = logging.getLogger(__name__)

CENTRAL_ROLE = "gridwatch-central"
GATEWAY_GROUP = "gridwatch-gateways"
"""Membership marks a client as made by the registry (and lists every gateway account)."""
USERNAME_PREFIX = "gw-"
EDGE_CLIENT_PREFIX = "gridwatch-edge-"
_ACL_TYPES = ("publishClientSend", "publishClientReceive", "subscribePattern", "unsubscribePattern")
_TOLERATED = {"createGroup": "already", "createRole": "already", "addClientRole": "already",
              "deleteClient": "not found", "deleteRole": "not found"}  # fmt: skip
"""The errors of an idempotent step that mean it was done already."""
IN_FLIGHT_MS = 60_000
"""An account of ours younger than this, for a gateway not registered yet, belongs to a
registration in progress (grant to commit takes seconds); older, one that failed half-way."""
_ISSUED = "gridwatch gateway account, issued at "


def username_for(gateway: str) -> str:
    """The broker username of a gateway registered now."""
    return f"{USERNAME_PREFIX}{gateway}"


def client_id_for(gateway: str) -> str:
    """The only MQTT client id the gateway's account may connect with (the edge uses it)."""
    return f"{EDGE_CLIENT_PREFIX}{gateway}"


def role_name(gateway: str) -> str:
    return f"gw-{gateway}"


@dataclass(frozen=True)
class Account:
    """A gateway's broker account: its gateway id and the username it logs in with."""

    gateway: str
    username: str

    @classmethod
    def of(cls, gateway: str, mqtt_settings: dict[str, Any] | None) -> Account:
        """The account a registered gateway's stored settings name; no username there: one
        registered before the namespace, whose username is its id."""
        return cls(gateway, str((mqtt_settings or {}).get("username") or gateway))

    @property
    def legacy(self) -> bool:
        return self.username != username_for(self.gateway)


def acls(*topics: str) -> list[dict[str, Any]]:
    return [{"acltype": t, "topic": topic, "allow": True} for topic in topics for t in _ACL_TYPES]


def gateway_acls(prefix: str, gateway: str) -> list[dict[str, Any]]:
    return acls(f"{prefix}/gw/{gateway}/#")


def inspect_commands(account: Account) -> list[dict[str, Any]]:
    return [
        {"command": "getClient", "username": account.username},
        {"command": "getRole", "rolename": role_name(account.gateway)},
    ]


def refusal(
    prefix: str, account: Account, client: dict[str, Any] | None, role: dict[str, Any] | None
) -> str | None:
    """Why the registry must not touch this account and role (None: they are its own, or do
    not exist). ``client`` and ``role`` are what getClient/getRole answered (None: not found)."""
    if client is not None:
        groups = {g.get("groupname") for g in client.get("groups", [])}
        roles = [r.get("rolename") for r in client.get("roles", [])]
        made_before = account.legacy and not groups and roles == [role_name(account.gateway)]
        if GATEWAY_GROUP not in groups and not made_before:
            return (
                f"broker account {account.username!r} exists and was not made by this registry "
                f"for gateway {account.gateway!r}; choose another gateway id, or ask the "
                "broker's administrator about that account"
            )
    if role is not None:
        have = {(a.get("acltype"), a.get("topic"), a.get("allow")) for a in role.get("acls", [])}
        want = {(a["acltype"], a["topic"], True) for a in gateway_acls(prefix, account.gateway)}
        if have != want:
            return (
                f"broker role {role_name(account.gateway)!r} exists with other rights than this "
                f"registry gives gateway {account.gateway!r}; choose another gateway id, or ask "
                "the broker's administrator about that role"
            )
    return None


def grant_commands(
    prefix: str, account: Account, password: str, replace: bool, now_ms: int
) -> list[dict[str, Any]]:
    """The gateway's role and a fresh client. ``replace``: an earlier client of ours (a rotation,
    or a registration that failed half-way) is deleted first, which cuts its live session;
    otherwise creating the client fails if it exists, which the broker decides atomically, so
    two registrations of one id at once cannot both get in."""
    role = role_name(account.gateway)
    return [
        {"command": "createGroup", "groupname": GATEWAY_GROUP},
        {"command": "createRole", "rolename": role, "acls": gateway_acls(prefix, account.gateway)},
        *([{"command": "deleteClient", "username": account.username}] if replace else []),
        {"command": "createClient", "username": account.username, "password": password,
         "clientid": client_id_for(account.gateway), "roles": [{"rolename": role}],
         "groups": [{"groupname": GATEWAY_GROUP}], "textname": f"{_ISSUED}{now_ms}"},
    ]  # fmt: skip


def issued_ms(client: dict[str, Any]) -> int:
    """When the registry made this client (0: unknown, e.g. made by an older registry)."""
    text = str(client.get("textname") or "")
    stamp = text.removeprefix(_ISSUED)
    return int(stamp) if text.startswith(_ISSUED) and stamp.isdigit() else 0


def revoke_commands(account: Account) -> list[dict[str, Any]]:
    # deleting the client disconnects its session in the same moment
    return [
        {"command": "deleteClient", "username": account.username},
        {"command": "deleteRole", "rolename": role_name(account.gateway)},
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
        done_already = _TOLERATED.get(cmd["command"])
        if error and not (done_already and done_already in error.lower()):
            out.append(f"{cmd['command']}: {error}")
    return out


_LOGIN_REFUSED = {4: "bad username or password", 5: "not authorised",
                  134: "bad username or password", 135: "not authorised"}  # fmt: skip
"""CONNACK codes that refuse a login (MQTT 3.1.1, then MQTT 5), in words."""


def refused_login(username: str | None, where: str, code: int) -> str | None:
    """The broker refused the registry's own login, said in words with what to check (None:
    ``code`` is no refused login). With dynsec the usual cause is not the password: mosquitto
    reads the plugin's file after it drops to user ``mosquitto``, and when that user cannot read
    it, or a folder above it, every login is refused, the admin's included."""
    if code not in _LOGIN_REFUSED:
        return None
    return (
        f"the broker at {where} refused the registry's login as {username!r} "
        f"(CONNACK {code}, {_LOGIN_REFUSED[code]}): check --broker-admin-user and the password "
        "in its environment variable; with --dynsec, check that user 'mosquitto' can read the "
        "file named by plugin_opt_config_file and enter every folder above it (mosquitto's own "
        "log then says 'Error loading Dynamic security plugin config'), see docs/registry.md"
    )


class DynsecAccess:
    """``BrokerAccess`` through the dynamic-security plugin."""

    def __init__(
        self, downlink: Downlink, prefix: str, clock: Callable[[], int] = lambda: _now_ms()
    ) -> None:
        self.downlink, self.prefix, self.clock = downlink, prefix, clock

    async def _run(self, commands: list[dict[str, Any]], what: str, setup: bool = False) -> None:
        responses = await self.downlink.control(commands, setup)
        errors = failures(commands, responses)
        if errors:
            raise BrokerUnavailable(f"the broker refused to {what}: {'; '.join(errors)}")

    async def _refuse_foreign(self, account: Account) -> dict[str, Any] | None:
        """``Conflict`` unless the account and role are absent or the registry's own; the
        client found (None: there is none)."""
        client, role = await self.downlink.control(inspect_commands(account))
        found_client = client.get("data", {}).get("client") if "error" not in client else None
        found_role = role.get("data", {}).get("role") if "error" not in role else None
        why = refusal(self.prefix, account, found_client, found_role)
        if why is not None:
            logger.warning("broker: refused to change an account of someone else: %s", why)
            raise Conflict(why)
        return found_client

    async def grant(self, account: Account, password: str, replace: bool) -> None:
        """``replace``: the gateway is registered and this is its new password; otherwise a new
        registration, which an account of ours still in use by another one must not replace."""
        found = await self._refuse_foreign(account)
        now = self.clock()
        if found is not None and not replace and now - issued_ms(found) < IN_FLIGHT_MS:
            raise _in_flight(account)
        replace = replace or found is not None  # a registration that failed half-way: replace
        commands = grant_commands(self.prefix, account, password, replace, now)
        responses = await self.downlink.control(commands)
        if "already" in str(responses[-1].get("error", "")).lower():
            raise _in_flight(account)  # another registration created it since we looked
        errors = failures(commands, responses)
        if errors:
            raise BrokerUnavailable(f"the broker refused to admit {account.gateway}: "
                                    f"{'; '.join(errors)}")  # fmt: skip
        logger.info(
            "broker: gateway %s admitted as %s (client id %s), confined to %s/gw/%s/#",
            account.gateway, account.username, client_id_for(account.gateway), self.prefix,
            account.gateway,
        )  # fmt: skip

    async def revoke(self, account: Account) -> None:
        await self._refuse_foreign(account)
        await self._run(revoke_commands(account), f"revoke {account.gateway}")
        logger.info("broker: gateway %s (%s) revoked and disconnected", account.gateway,
                    account.username)  # fmt: skip

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


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _in_flight(account: Account) -> Conflict:
    return Conflict(
        f"gateway {account.gateway!r} is being registered by another request right now; if "
        f"that one failed, try again in {IN_FLIGHT_MS // 1000} s"
    )


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

    async def grant(self, account: Account, password: str, replace: bool) -> None:
        self._warn()

    async def revoke(self, account: Account) -> None:
        self._warn()
