"""Neural-network MCMC step methods for PyMC, compiled to JAX and exact by Metropolis-Hastings."""

__version__ = "0.1.0"
