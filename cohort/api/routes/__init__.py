"""One router module per Octavia resource family."""
