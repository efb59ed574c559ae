"""Model backends: mixed (numpy REML core in ``lmm/``), ols, gee and bayes (PyMC).

Only this subpackage imports statsmodels or PyMC.
"""
