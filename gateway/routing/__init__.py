"""Routing: a loaded config resolves a model name to a plan; policies rank routed candidates."""
