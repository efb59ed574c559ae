"""Planning trials: designs, simulated data and Monte Carlo power.

One module per concept: :mod:`~alliance_models.planning.design` (the planned trial),
:mod:`~alliance_models.planning.simulate` (the one simulator),
:mod:`~alliance_models.planning.analytic` (closed-form power),
:mod:`~alliance_models.planning.run` (a power run: replicates fitted in batches),
:mod:`~alliance_models.planning.executors` (where batches run),
:mod:`~alliance_models.planning.checkpoint` (saving and resuming runs),
:mod:`~alliance_models.planning.results` (result types) and
:mod:`~alliance_models.planning.search` (power curves and sample size). The public names
are reachable from ``alliance_models`` itself (``am.Design``, ``am.power`` ...).
"""
