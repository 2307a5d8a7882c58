"""aether.storage."""
