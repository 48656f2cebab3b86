"""OPC UA client driver (entry point `opcua`); asyncua is imported only when a device connects
(`pip install gatewayd[opcua]`), so configs with OPC UA devices validate without it."""

from .driver import OpcUaDriver
from .options import OpcUaOptions, OpcUaPoint

__all__ = ["OpcUaDriver", "OpcUaOptions", "OpcUaPoint"]
