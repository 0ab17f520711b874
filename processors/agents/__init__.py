"""The processors' Faust agents, one module each, around the pure handlers.

Each agent decodes its topic's records, calls its pure handler
(:mod:`processors.handlers`) with the key's state, and stages the outcome: state for its
table, points for its sink, messages for other agents and the alert service. The
commit-after-sink loop that wraps every agent is written once (:mod:`.loop`).

===================  ===============================  ======================================
module               reads                            writes
===================  ===============================  ======================================
:mod:`.device`       ``readings.{air,water,seismic}``  readings, figures, health points;
                                                      ``processors.township`` reports;
                                                      ``seismic.triggers`` ticks
:mod:`.township`     ``processors.township``          township points, alert candidates
:mod:`.quake`        ``seismic.triggers``             quake points, alert candidates,
                                                      ``processors.shaking`` notices
:mod:`.shaking`      ``processors.shaking``           the device's mark, its point
:mod:`.deadletter`   ``readings.deadletter``          dead-letter counts
===================  ===============================  ======================================

:mod:`.timers` holds the periodic work (open candidates re-sent, the silence watch, the
pipeline statistics); :mod:`.tables` the typed tables; :mod:`.outbox` the producer side;
:mod:`.stats` what the worker observes of itself (counters, processing-clock activity,
lag).
"""
