"""Health: signed UDP heartbeats from amphorae and distributors, and what the controller makes of them."""
