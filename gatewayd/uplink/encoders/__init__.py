"""Message encoders beyond the default JSON array (see gatewayd/uplink/payload.py); each is
registered under the entry point group "gatewayd.encoders" in pyproject.toml."""
