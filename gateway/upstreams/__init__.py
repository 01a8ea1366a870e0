"""Upstreams: the endpoint pool, circuit breaker and slot limiter per upstream endpoint."""
