"""Test tooling for Tollgate (fake upstreams and helpers); not used by the gateway at runtime."""
