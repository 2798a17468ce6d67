"""Hook plugins that misbehave on purpose (see setup.cfg)."""
