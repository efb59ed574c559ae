"""Power analysis for planned trials: design, simulator, Monte Carlo engine."""
