"""Delivery of platform messages to subscribers: webhooks, the SSE stream, MQTT; and the clock
of the case workflow (automatic filing, sensor verification, urging).

Every channel reads the same ordered feed (``opsmodels.PlatformEvent``) from a cursor of its own,
so all three carry the same messages in the same order; docs/alerts.md describes them.
"""

from device_registry.delivery.feed import FeedSignal
from device_registry.delivery.webhooks import RetryPolicy, WebhookDispatcher, sign, verify

__all__ = ["FeedSignal", "RetryPolicy", "WebhookDispatcher", "sign", "verify"]
