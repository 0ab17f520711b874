"""The operator layer: the ``civic-iot`` CLI, the demo, status, setup and provisioning.

It sits on top of the services and the core and may import any of them; nothing imports it.
"""
