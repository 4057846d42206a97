"""Agents: the small servers running inside amphorae and distributors, driven by the controller."""
