"""Cloud channels (see base.py): which one a profile uses, by [uplink] `channel`."""

from __future__ import annotations

from collections.abc import Mapping

from gatewayd.config import UplinkConfig

from .aws import AwsChannel
from .azure import AzureChannel
from .base import Channel, CommandIn, ConfigPush, Incoming
from .thingsboard import ThingsBoardChannel
from .topic import TopicChannel

__all__ = ["Channel", "CommandIn", "ConfigPush", "Incoming", "channel_for"]


def channel_for(cfg: UplinkConfig, topics: Mapping[str, str]) -> Channel:
    if cfg.channel == "azure":
        return AzureChannel()
    if cfg.channel == "aws":
        thing = cfg.client_id.format(**cfg.template_values())
        return AwsChannel(thing, topics["commands"], topics["command_results"])
    if cfg.channel == "thingsboard":
        return ThingsBoardChannel(cfg.field_device_name, cfg.device)
    return TopicChannel(topics, cfg.retain_state)
