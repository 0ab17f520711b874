"""The HTTP door of civic-iot for people and programs that read: the read API, OGC
SensorThings API (read part), live push and the operations console.

One FastAPI application (:func:`api.app.create_app`), run by ``civic-iot api run``
(uvicorn, loopback by default). Public data (devices, readings, alerts, earthquakes,
SensorThings) is readable without a token, rate-limited per client IP; everything else
needs a bearer token with the right role (:mod:`civic_iot.auth`, :mod:`api.deps`).
The service reads InfluxDB (the storage schema names every measurement and field) and
the device registry; it writes nothing.
"""
