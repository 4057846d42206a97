"""Driver seams: small Protocols with Octavia's verbs, a noop and a real implementation each."""
