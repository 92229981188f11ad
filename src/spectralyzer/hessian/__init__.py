"""Hessian probes (THEORY.md section 4): curvature of a model that runs, on a batch of data.

Matrix-free: everything is built on curvature-matrix-vector products.
- :mod:`.operator`: the Hessian of a loss as a linear operator (double backward).
- :mod:`.ggn`: the Generalised Gauss-Newton matrix ``J^T H_L J``, same interface.
- :mod:`.lanczos`: Lanczos with full re-orthogonalisation; top eigenpairs.
- :mod:`.trace`: Hutchinson's and Hutch++ trace estimators with standard errors.
- :mod:`.slq`: stochastic Lanczos quadrature for the spectral density.
- :mod:`.batch_scaling`: top eigenvalue and learning rate against batch size (Granziol et al.).
- :mod:`.step_sizes`: stability limits and momentum rules (pure functions).
- :mod:`.probe`: the pipeline behind ``spectralyzer probe``; :mod:`.render` its output.
"""
