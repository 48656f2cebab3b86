"""`gatewayd fleet`: an operator's view of many gateways and staged config rollouts, over MQTT.

Invariants:
- no database: the gateways' state documents (retained on the broker with `[uplink]
  retain_state = true`) and their retained config documents are the source of truth; the only
  file fleet writes is a rollout's plan and results (write-temp, fsync, rename);
- never imported by the daemon: `gatewayd run` does not load this package (lazy imports in
  gatewayd/cli.py), so it costs a gateway nothing;
- versions only go up: a halted rollout puts gateways back by pushing their previous document
  under a new, higher version, never by re-sending an old one;
- a gateway is pushed a version at most once: before a push, fleet looks at the retained config
  on the broker, and a gateway that already carries the version is not pushed again (a resumed
  rollout, a reconnect after a broker node died).
"""
