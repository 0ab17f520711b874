"""Every message shape that crosses a process or a Kafka topic, defined once.

- :mod:`civic_iot.contracts.readings`: what a device publishes and the validated reading
  ingest writes to ``readings.{kind}``;
- :mod:`civic_iot.contracts.deadletter`: a refused device message (``readings.deadletter``);
- :mod:`civic_iot.contracts.storage`: a point InfluxDB did not store (``storage.deadletter``);
- :mod:`civic_iot.contracts.processing`: messages between the processors' own agents;
- :mod:`civic_iot.contracts.alerts`: the alert candidate a detector sends the alert service.
"""
