"""What a chain does during warm-up and sampling, as pure JAX ``ChainProgram``s.

Driver-neutral: the PyMC step methods (``steps/``) and the fast driver (``sampling.py``)
run the same programs. ``learned.py`` holds the skeleton every learned kernel shares
(HMC warm-up, training on a walker ensemble, frozen kernel); ``l2hmc.py`` and
``entropy.py`` fill it in for L2HMC and the proposal-entropy sampler.
"""
