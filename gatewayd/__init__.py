"""gatewayd: edge gateway daemon, field devices to a cloud MQTT broker without losing a reading.

Kept tiny on purpose: drivers and the buffer import `gatewayd.reading`, and this package's
import cost is paid by everything.
"""

__version__ = "0.1.0"
