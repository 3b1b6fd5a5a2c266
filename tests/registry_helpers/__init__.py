"""Helpers for the registry tests: real images pushed with skopeo, TLS/token registries, a
fault-injecting proxy."""
