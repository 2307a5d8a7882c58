"""aether.node."""
