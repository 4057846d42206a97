"""Cohort: active-active, N+1 load balancing behind the Octavia v2 API."""

__version__ = "0.1.0"
