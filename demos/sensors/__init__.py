"""The drifting-sensors demo: ``python -m demos.sensors`` (``--help`` for the options).

``demos.sensors.simulator`` holds the sensor simulator, reusable on its own.
"""
