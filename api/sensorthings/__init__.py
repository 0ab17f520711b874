"""OGC SensorThings API v1.1, read part, over the device registry and InfluxDB.

Served under ``/sta/v1.1/`` and ``/sta/v1.0/`` (Civil IoT Taiwan's services answer on
v1.0; the documents are the same, the Location encoding follows the version).

- :mod:`.model`: the entity sets and the static part of the graph (Things, Locations,
  Sensors, ObservedProperties, Datastreams, FeaturesOfInterest) built from the registry
  and the catalogue of quantities;
- :mod:`.filter`: the ``$filter`` grammar (a tokenizer and a precedence-climbing parser;
  nothing is ever evaluated as Python), :mod:`.options` the other query options and the
  resource path;
- :mod:`.evaluate`: ``$filter`` and ``$orderby`` over the static entities, in Python;
- :mod:`.observations`: Observations from InfluxDB, ``$filter`` translated to Flux;
- :mod:`.service`: a request resolved and answered; :mod:`.routes`: the HTTP routes.
"""
