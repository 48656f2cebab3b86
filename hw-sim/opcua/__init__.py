"""An OPC UA server to test the OPC UA driver against: asyncua's own server, an independent
implementation of the protocol, with a small plant address space, changing values and faults."""

from .certs import make_certificate
from .server import SimServer

__all__ = ["SimServer", "make_certificate"]
