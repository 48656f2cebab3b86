"""Cloud channels (see base.py): which one a profile uses, by [uplink] `channel`.

A cloud's channel module is imported only when a profile uses it (`channel_for`): a plain MQTT
gateway loads neither the Azure, AWS nor ThingsBoard code nor the remote-config command parser
two of them bring.
"""

from __future__ import annotations

from collections.abc import Mapping

from gatewayd.config import UplinkConfig

from .base import Channel, CommandIn, ConfigPush, Incoming
from .topic import TopicChannel

__all__ = ["Channel", "CommandIn", "ConfigPush", "Incoming", "channel_for"]


def channel_for(cfg: UplinkConfig, topics: Mapping[str, str]) -> Channel:
    if cfg.channel == "azure":
        from .azure import AzureChannel

        return AzureChannel()
    if cfg.channel == "aws":
        from .aws import AwsChannel

        thing = cfg.client_id.format(**cfg.template_values())
        return AwsChannel(thing, topics["commands"], topics["command_results"])
    if cfg.channel == "thingsboard":
        from .thingsboard import ThingsBoardChannel

        return ThingsBoardChannel(cfg.field_device_name_of)
    return TopicChannel(topics, cfg.retain_state)
