"""aether.crypto."""
