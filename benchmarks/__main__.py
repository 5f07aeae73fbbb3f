"""``python -m benchmarks``: see ``benchmarks/__init__.py`` and ``--help``."""

import warnings

# PyTensor warns at import when it finds no BLAS; it says nothing about the comparison.
warnings.filterwarnings("ignore", message=".*BLAS.*")

from benchmarks.runner import main  # noqa: E402

raise SystemExit(main())
