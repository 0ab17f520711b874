"""Alerts: one alert per hazard and area, with a lifecycle, in CAP 1.2, for agencies.

The core modules below are pure: no sockets, no clocks, no randomness of their own. The alert
service (Kafka in, MQTT and webhooks out) calls them with the time and the state it holds.

- :mod:`alerts.lifecycle`: the state machine from :class:`civic_iot.events.AlertCandidate`
  to :class:`~alerts.lifecycle.AlertMessage` (Alert, Update, Cancel), with hold times,
  expiry, acknowledgement and a JSON-able state that survives a restart.
- :mod:`alerts.cap`: the OASIS CAP 1.2 XML form of a message, and a small parser.
- :mod:`alerts.messages`: the JSON form of the same message for MQTT and webhooks.
- :mod:`alerts.subscriptions`: which webhook subscriptions a message goes to.
- :mod:`alerts.signing`: HMAC-SHA256 webhook signatures with a timestamp.
- :mod:`alerts.backoff`: exponential backoff with full jitter for webhook retries.

The I/O shell around them:

- :mod:`alerts.service`: the asyncio service (Kafka ``alerts.candidates`` in; the
  ``alerts`` topic, the compacted ``alerts.state`` topic and InfluxDB out), rebuilding its
  state from ``alerts.state`` whenever it becomes the active instance.
- :mod:`alerts.election`: which of several instances is active (a Kafka consumer group on
  the one-partition ``alerts.leader`` topic), and the fence checked before each write.
- :mod:`alerts.delivery`: the ``Sink`` protocol (``add``, ``flush``, ``close``), MQTT
  (retained, QoS 1), signed webhooks with per-subscriber queues, InfluxDB points.
- :mod:`alerts.http`: ``/health``, ``/alerts``, ``/alerts/{alert_id}/ack``, ``/metrics``.
- :mod:`alerts.cli`: ``civic-iot alerts run`` and ``civic-iot alerts ack``.
"""
