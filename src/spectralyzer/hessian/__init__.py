"""Curvature math for the Hessian probes: matrix-free, on curvature-matrix-vector products.

Imports nothing outside this folder; the pipeline that uses it is :mod:`spectralyzer.probe_pipeline`.
- :mod:`.operator`: the :class:`~.operator.CurvatureOperator` interface every estimator
  takes, and the Hessian of a loss as one (double backward).
- :mod:`.ggn`: the Generalised Gauss-Newton matrix ``J^T H_L J``, same interface.
- :mod:`.attention`: the math attention backend while a graph is built (fused kernels have
  no double backward), and :class:`~.attention.NoDoubleBackward` naming an operation without one.
- :mod:`.microbatch`: products accumulated over micro-batches; the size of one micro-batch's graph.
- :mod:`.finite_difference`: Hessian products by central differences of gradients.
- :mod:`.lanczos`: Lanczos with full re-orthogonalisation; top eigenpairs.
- :mod:`.basis`: where the Lanczos basis lives (a tensor, maybe in lower precision, or a file).
- :mod:`.trace`: Hutchinson's and Hutch++ trace estimators with standard errors.
- :mod:`.slq`: stochastic Lanczos quadrature for the spectral density.
- :mod:`.batch_scaling`: top eigenvalue and learning rate against batch size (Granziol et al.).
- :mod:`.step_sizes`: stability limits and momentum rules (pure functions).
- :mod:`.adam_state`: Adam's preconditioner from its saved second moments, and its limit.
"""
