"""Hessian probes (THEORY.md section 4): curvature of a model that runs, on a batch of data.

Matrix-free: everything is built on Hessian-vector products.
- :mod:`.operator`: the Hessian of a loss as a linear operator (``torch.func``).
- :mod:`.lanczos`: Lanczos with full re-orthogonalisation; top eigenvalues.
- :mod:`.trace`: Hutchinson's trace estimator with its standard error.
- :mod:`.slq`: stochastic Lanczos quadrature for the spectral density.
"""
