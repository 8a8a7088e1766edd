"""What comes down the tree: configuration pushes and commands.

A config push is validated exactly like a YAML file (same models, same messages, key paths
included), applied without a restart, stored beside the outbox so a reboot comes back with it,
and acknowledged (accepted, or rejected with every reason). A command runs on its device's bus,
queued with that bus's polls, and its result goes back. Acks and results travel through the
outbox like everything else, so they survive an outage too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import ValidationError

from drivers.errors import DriverError
from edge.outbox import PRIO_ALERT, Outbox
from gridwatch.ground.contract import Command, CommandResult, ConfigAck, ConfigPush, Topics
from gridwatch.ground.gatewayconf import GatewayConfig, ResolvedDevice, resolve_with_profiles
from gridwatch.ground.yamlconf import ConfigError, ConfigProblem, data_paths, problems_from

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 10.0

Apply = Callable[[GatewayConfig, list[ResolvedDevice]], Awaitable[None]]
Write = Callable[[str, str, float | int | bool], Awaitable[None]]


class Remote:
    def __init__(
        self,
        current: GatewayConfig,
        outbox: Outbox,
        topics: Topics,
        store: Path,
        apply: Apply,
        write: Write,
        clock: Callable[[], float],
    ) -> None:
        self.current, self.outbox, self.topics, self.store = current, outbox, topics, store
        self.apply, self.write, self.clock = apply, write, clock
        self.gateway = current.gateway.id
        self._lock = asyncio.Lock()  # one config change at a time
        self._retired = False  # said once: a cleared config comes again on a resubscribe

    async def handle(self, leaf: str, payload: bytes) -> None:
        if leaf == "config":
            await self._config(payload)
        elif leaf == "cmd":
            await self._command(payload)

    # --- configuration -----------------------------------------------------------------------
    async def _config(self, payload: bytes) -> None:
        if not payload.strip():
            # the registry clears the retained config when it retires the gateway: no push to
            # read, and no error of this box; the centre drops what it still sends
            if not self._retired:
                self._retired = True
                logger.warning(
                    "gateway %s was retired at the centre (its config there was cleared): the "
                    "centre no longer takes what it sends. Stop this edge and take the box off "
                    "the network, or, if it should stay, register it again (gridwatch gateway add "
                    "%s) and give it the new MQTT password", self.gateway, self.gateway,
                )  # fmt: skip
            return
        try:
            push = ConfigPush.model_validate_json(payload)
        except ValidationError as exc:
            logger.error("config push unreadable: %s", exc.errors()[0]["msg"])
            return  # no version to acknowledge; the registry sees no ack
        async with self._lock:
            if push.version <= self.current.version:
                # the retained push comes again on every reconnect: acknowledge, don't re-apply
                self._ack(push.version, accepted=push.version == self.current.version, errors=[
                    f"version {push.version} is older than the running {self.current.version}"
                ] if push.version < self.current.version else [])  # fmt: skip
                return
            errors, cfg, devices = self.validate(push)
            if cfg is None:
                self._ack(push.version, accepted=False, errors=errors)
                return
            await self.apply(cfg, devices)
            self.current = cfg
            self.store.parent.mkdir(parents=True, exist_ok=True)
            self.store.write_text(json.dumps({**push.config, "version": push.version}))
            logger.info("config version %d applied (%d devices)", cfg.version, len(devices))
            self._ack(push.version, accepted=True, errors=[])

    def validate(
        self, push: ConfigPush
    ) -> tuple[list[str], GatewayConfig | None, list[ResolvedDevice]]:
        where = f"config v{push.version}"
        data = {**push.config, "version": push.version}
        try:
            cfg = GatewayConfig.model_validate(data)
        except ValidationError as exc:
            return [_plain(p) for p in problems_from(exc, where, data_paths(data))], None, []
        problems = self._unappliable(cfg)
        if problems:
            return problems, None, []
        try:
            devices = resolve_with_profiles(cfg, where)
        except ConfigError as exc:
            return [_plain(p) for p in exc.problems], None, []
        return [], cfg, devices

    def _unappliable(self, cfg: GatewayConfig) -> list[str]:
        """What in a valid config cannot be applied to this running gateway."""
        problems = []
        if cfg.gateway.id != self.gateway:
            problems.append(
                f"gateway -> id: is {cfg.gateway.id!r}, this gateway is {self.gateway!r}"
            )
        if cfg.mqtt != self.current.mqtt or cfg.outbox != self.current.outbox:
            problems.append("mqtt/outbox: changing the uplink or the outbox needs a restart")
        return problems

    async def apply_file(
        self, cfg: GatewayConfig, devices: list[ResolvedDevice], where: str
    ) -> bool:
        """The config file read again (SIGHUP), already validated: applied like a push, under
        the same rules, except that it is not stored (the file is its own store) or acknowledged
        (the centre did not send it). As at start-up, a pushed config of a higher version
        outranks the file."""
        async with self._lock:
            problems = self._unappliable(cfg)
            if cfg.version < self.current.version:
                problems.append(f"version: {cfg.version} is older than the running "
                                f"{self.current.version} (pushed by the centre)")  # fmt: skip
            if problems:
                logger.error("%s not applied, the running config v%d is kept: %s", where,
                             self.current.version, "; ".join(problems))  # fmt: skip
                return False
            await self.apply(cfg, devices)
            self.current = cfg
            logger.info("%s reloaded: config version %d applied (%d devices)", where,
                        cfg.version, len(devices))  # fmt: skip
            return True

    def _ack(self, version: int, accepted: bool, errors: list[str]) -> None:
        ack = ConfigAck(
            gateway=self.gateway, version=version, accepted=accepted, errors=errors,
            ts=int(self.clock() * 1000),
        )  # fmt: skip
        if not accepted:
            logger.error("config version %d rejected: %s", version, "; ".join(errors))
        self.outbox.enqueue(
            PRIO_ALERT, "control", self.topics.config_ack(self.gateway),
            lambda _seq: ack.model_dump_json().encode(),
        )  # fmt: skip

    # --- commands ------------------------------------------------------------------------------
    async def _command(self, payload: bytes) -> None:
        try:
            cmd = Command.model_validate_json(payload)
        except ValidationError as exc:
            logger.error("command unreadable: %s", exc.errors()[0]["msg"])
            return
        error = ""
        now_ms = int(self.clock() * 1000)
        if cmd.expires_at is not None and now_ms > cmd.expires_at:
            error = (f"expired: it reached the gateway {now_ms - cmd.expires_at} ms after its "
                     "deadline and was not run")  # fmt: skip
        else:
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT_S):
                    await self.write(cmd.device, cmd.point, cmd.value)
            except DriverError as exc:
                error = str(exc)
            except TimeoutError:
                error = f"no answer within {COMMAND_TIMEOUT_S}s"
        expired = cmd.expires_at is not None and now_ms > cmd.expires_at
        result = CommandResult(id=cmd.id, gateway=self.gateway, ok=not error, error=error,
                               expired=expired, ts=int(self.clock() * 1000))  # fmt: skip
        logger.info(
            "command %s %s.%s=%s: %s", cmd.id, cmd.device, cmd.point, cmd.value, error or "ok"
        )
        self.outbox.enqueue(
            PRIO_ALERT, "control", self.topics.command_result(self.gateway),
            lambda _seq: result.model_dump_json().encode(),
        )  # fmt: skip


def _plain(p: ConfigProblem) -> str:
    keys = " -> ".join(str(k) for k in p.path) or "(top level)"
    got = "" if p.value is None else f" (got {p.value!r})"
    return f"{keys}: {p.message}{got}"
