"""Pure JAX transition kernels: no PyMC, no Python state (``init`` / ``kernel`` pairs)."""
