"""Talking to registries: the HTTP transport and the distribution API client."""
