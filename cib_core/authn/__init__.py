"""Credentials, registry challenges and tokens, and the stores credentials are kept in."""
