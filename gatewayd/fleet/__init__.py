"""`gatewayd fleet`: an operator's view of many gateways, staged config rollouts and self-updates
in waves, over MQTT (the wave machinery in waves.py; rollout.py and update.py are its two jobs).

Invariants:
- no database: the gateways' state documents (retained on the broker with `[uplink]
  retain_state = true`) and their retained config documents are the source of truth; the only
  file fleet writes is a run's plan and results (write-temp, fsync, rename);
- never imported by the daemon: `gatewayd run` does not load this package (lazy imports in
  gatewayd/cli.py), so it costs a gateway nothing;
- versions only go up: a halted rollout puts gateways back by pushing their previous document
  under a new, higher version, never by re-sending an old one;
- a gateway is sent a change at most once per run: before sending, fleet looks at the broker
  (a rollout: the retained config carries the version; an update: the state shows the run's
  command id, the update under way or the version running) and does not send again (a resumed
  run, a reconnect after a broker node died).
"""
