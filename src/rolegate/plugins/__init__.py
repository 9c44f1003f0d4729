"""Providers and roles as pluggy plugins."""
