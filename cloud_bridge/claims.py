"""What the bridges of a share group tell each other they published: one claim per transition.

Each bridge keeps its own publish ledger (``ledger.py``), so a transition handed to two bridges
would go out twice. That is what a share group does during a registry outage longer than the
gateway's ack timeout (15 s): the centre cannot acknowledge what it relayed, the gateway sends the
alert again, and the group hands the resend to the other member, whose ledger never saw it. The
registry cannot settle it (it is the part that is down), so the bridges settle it through the
broker, which they all have:

- after the broker's PUBACK of a platform alert, the bridge that published it publishes a
  *claim*: ``P/gw/G/published/M`` (gateway ``G``, message id ``M``: the transition key,
  ``core.transition_key``), retained, with an MQTT 5 message expiry of ``claims_expiry_s``, so
  the broker forgets it by itself and a member that starts later still gets it;
- every member listens to ``P/gw/+/published/+`` on a session of its own (clean, acknowledged
  on receipt) and remembers what it hears (``ClaimBook``), in memory, as long as a claim lives;
- before publishing, a member leaves out what its ledger *or* the claims it heard name.

Under the gateway's own tree, so the centre's broker role (``P/gw/#``) covers it and no ACL
changes; the gateways subscribe to named leaves only, so they never receive it.

Before a fresh session has had the retained claims, it knows none of them: it publishes a marker
of its own on the claims' filter after subscribing (the broker sends the retained messages of a
subscription before anything published after it) and is *ready* when the marker comes back; a
publish waits for that at most ``READY_WAIT_S``.

What it cannot promise (docs/central.md): a bridge that dies between an alert's PUBACK and its
claim's, or two members that publish one transition within the few milliseconds a claim takes
to reach the other; a claim older than ``claims_expiry_s``; a member started after a broker lost
its retained messages (a crash before its autosave). An alert is never held back for a claim.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Collection

import aiomqtt

from gridwatch.ground.contract import Topics
from gridwatch.ground.mqttsession import MqttSession, SessionSettings

logger = logging.getLogger(__name__)

LEAF = "published"
MARKER_GATEWAY = "_bridges"
"""The gateway level of a session's readiness marker: no claim of a transition."""
CLAIMS_MAX = 200_000
"""Claims remembered at most: over it the oldest are forgotten (a transition may then go out
twice, as without claims)."""
READY_WAIT_S = 0.5
"""How long a publish waits for a fresh claims session to have the retained claims."""


def claim_topic(topics: Topics, transition: str) -> str:
    """``gateway/message id`` -> ``P/gw/gateway/published/message id`` (ids hold no ``/``)."""
    gateway, _, message = transition.partition("/")
    return topics.gateway(gateway, f"{LEAF}/{message}")


def claimed_transition(topics: Topics, topic: str) -> str | None:
    """The transition a claim's topic names; None for anything else."""
    parsed = topics.parse_gateway_topic(topic)
    if parsed is None:
        return None
    gateway, leaf = parsed
    head, _, message = leaf.partition("/")
    if head != LEAF or not message or "/" in message:
        return None
    return f"{gateway}/{message}"


class ClaimBook:
    """The claims heard, with when: pure, time given."""

    def __init__(self, keep_ms: int, limit: int = CLAIMS_MAX) -> None:
        self.keep_ms, self.limit = keep_ms, limit
        self._at: dict[str, int] = {}  # in the order heard: the oldest first

    def __len__(self) -> int:
        return len(self._at)

    def add(self, transitions: Collection[str], now: int) -> None:
        for t in transitions:
            self._at.pop(t, None)
            self._at[t] = now
        over = len(self._at) - self.limit
        if over > 0:
            for t in list(self._at)[:over]:
                del self._at[t]

    def claimed(self, transitions: Collection[str], now: int) -> set[str]:
        """The subset of ``transitions`` another member (or this one) said it published."""
        oldest = now - self.keep_ms
        return {t for t in transitions if self._at.get(t, oldest - 1) >= oldest}

    def prune(self, now: int) -> int:
        """Forget the claims the broker has let expire; how many."""
        oldest = now - self.keep_ms
        gone = [t for t, at in self._at.items() if at < oldest]
        for t in gone:
            del self._at[t]
        return len(gone)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Claims:
    """A member's claims session: listens to every member's claims (its own included)."""

    def __init__(
        self, settings: SessionSettings, topics: Topics, keep_s: int,
        clock: Callable[[], int] = now_ms,
    ) -> None:  # fmt: skip
        self.topics, self.keep_s, self.clock = topics, keep_s, clock
        self.book = ClaimBook(keep_s * 1000)
        self.session = MqttSession(settings, "bridge claims")
        self._ready = asyncio.Event()

    @property
    def filter(self) -> str:
        return self.topics.all_gateways(f"{LEAF}/+")

    async def run(self) -> None:
        await self.session.run(self._serve)

    async def claimed(self, transitions: Collection[str]) -> set[str]:
        """What the members claimed of ``transitions``: after the session has had the retained
        claims, or ``READY_WAIT_S`` (then with what it heard so far, and said at DEBUG)."""
        if not self._ready.is_set():
            try:
                async with asyncio.timeout(READY_WAIT_S):
                    await self._ready.wait()
            except TimeoutError:
                logger.debug("claims session not ready: publishing on the claims heard so far")
        return self.book.claimed(transitions, self.clock())

    def heard(self, transitions: Collection[str]) -> None:
        """This member's own claims, known at once (its session hears them back later)."""
        self.book.add(transitions, self.clock())

    async def _serve(self, client: aiomqtt.Client) -> None:
        self._ready.clear()  # a clean session: the retained claims come again
        marker = self.topics.gateway(MARKER_GATEWAY, f"{LEAF}/{uuid.uuid4().hex}")
        await client.publish(marker, b"", qos=1)
        try:
            async for msg in client.messages:
                topic = msg.topic.value
                if topic == marker:
                    self._ready.set()
                    continue
                transition = claimed_transition(self.topics, topic)
                # an empty retained message deletes a claim: nothing claimed
                if (
                    transition is None
                    or not msg.payload
                    or transition.startswith(f"{MARKER_GATEWAY}/")
                ):
                    continue
                self.book.add([transition], self.clock())
        finally:
            self._ready.clear()


__all__ = ["CLAIMS_MAX", "ClaimBook", "Claims", "claim_topic", "claimed_transition"]
