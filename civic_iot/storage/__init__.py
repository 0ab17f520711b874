"""Storage in InfluxDB: one point type (:mod:`civic_iot.storage.points`) and one sink with
one failure policy (:mod:`civic_iot.storage.sink`) for every service."""
