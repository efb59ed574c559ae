"""Model backends: mixed (statsmodels MixedLM), ols, gee and bayes (PyMC).

Only this subpackage imports statsmodels or PyMC.
"""
