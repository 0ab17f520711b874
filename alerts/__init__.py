"""Alerts: one alert per hazard and area, with a lifecycle, in CAP 1.2, for agencies.

The core modules below are pure: no sockets, no clocks, no randomness of their own. The alert
service (Kafka in, MQTT and webhooks out) calls them with the time and the state it holds.

- :mod:`alerts.lifecycle`: the state machine from :class:`civic_iot.events.AlertCandidate`
  to :class:`~alerts.lifecycle.AlertMessage` (Alert, Update, Cancel), with hold times,
  expiry, acknowledgement and a JSON-able state that survives a restart.
- :mod:`alerts.cap`: the OASIS CAP 1.2 XML form of a message, and a small parser.
- :mod:`alerts.messages`: the JSON form of the same message for MQTT and webhooks.
- :mod:`alerts.subscriptions`: webhook subscriptions, which messages they receive, and
  their secrets (derived, never stored).
- :mod:`alerts.signing`: HMAC-SHA256 webhook signatures over timestamp, message id, body;
  :mod:`alerts.receiver`: the receiver's side, as ``docs/webhooks.md`` documents it.
- :mod:`alerts.limits`: the size caps that keep every record within Kafka's and
  Mosquitto's limits; :mod:`alerts.text`: XML-safe text and escaped log values.
- :mod:`alerts.api`: the HTTP API's models and routes, and its OpenAPI 3.1 document.

The I/O shell around them:

- :mod:`alerts.service`: the asyncio service (Kafka ``alerts.candidates`` in; the
  ``alerts`` topic, the compacted ``alerts.state`` topic and InfluxDB out), rebuilding its
  state from ``alerts.state`` whenever it becomes the active instance.
- :mod:`alerts.election`: which of several instances is active (a Kafka consumer group on
  the one-partition ``alerts.leader`` topic), and the fence checked before each write.
- :mod:`alerts.delivery`: the ``Sink`` protocol (``add``, ``flush``, ``close``), MQTT
  (retained, QoS 1), InfluxDB points.
- :mod:`alerts.webhooks`: the durable webhook consumer of the ``alerts`` topic;
  :mod:`alerts.subscription_store`: subscriptions in the compacted topic
  ``alerts.subscriptions``; :mod:`alerts.urls`: the SSRF guard.
- :mod:`alerts.http`: the authenticated HTTP API (aiohttp) and its client.
- :mod:`alerts.cli`: ``civic-iot alerts run|ack|subscriptions``.
"""
