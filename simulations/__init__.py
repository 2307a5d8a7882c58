"""aether.simulations."""
