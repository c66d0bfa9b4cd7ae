"""Serving: the HTTP API over a `tastemaker.deployment.Runtime`."""
