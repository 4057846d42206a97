"""Request bodies, validated with pydantic and refused in Octavia's fault format."""
