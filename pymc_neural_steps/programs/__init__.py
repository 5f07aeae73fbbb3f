"""What a chain does during warm-up and sampling, as pure JAX ``ChainProgram``s.

Driver-neutral: the PyMC step methods (``steps/``) and the fast driver (``sampling.py``)
run the same programs. ``base.py`` holds the shape (``ChainProgram``, stats, keys);
``hmc.py`` HMC with Stan-style warm-up; ``nnghmc.py`` NNgHMC's training and assessment of a
gradient surrogate; ``learned.py`` the skeleton every learned kernel shares (HMC warm-up,
training on a walker ensemble, frozen kernel), which ``l2hmc.py`` and ``entropy.py`` fill in
for L2HMC and the proposal-entropy sampler.
"""
