"""Amphora seam: the controller's client of the agent inside each amphora."""
