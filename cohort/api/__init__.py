"""The Octavia v2 REST API: writes desired state, reads status. It never calls drivers."""
