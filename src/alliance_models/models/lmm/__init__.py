"""The linear mixed model (REML / ML) core: two likelihood engines, one search, one df.

* :mod:`.dense` -- lme4's formulation for any random part (blockwise dense algebra),
  behind :func:`alliance_models.fit_mixed`;
* :mod:`.batched` -- random intercepts (one factor or two nested) for many replicates
  at once, from per-cluster sufficient statistics;
* :mod:`.batched_slopes` -- the statistics and criterion of a correlated random slope
  with a nested intercept (``(1 + x | a) + (1 | a:b)``) for the same batched optimiser;
* :mod:`.search` -- the one boundary/optimum search over the relative SDs and its table
  of constants, used by both engines;
* :mod:`.satterthwaite` -- the one Satterthwaite df implementation;
* :mod:`.batch_fit` -- :func:`~.batch_fit.fit_batch`, the batched fit of many replicates
  used by power simulation.
"""
