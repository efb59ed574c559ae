# Reference values for tests/test_probing.py: simple slopes and Johnson-Neyman bounds.
# Run from the repository root:  Rscript tests/r/probing_reference.R
# Written with R 4.2, rockchalk 1.8.157 (testSlopes: JN roots of the quadratic) and
# emmeans 1.8.4-1 (emtrends: conditional slopes with SE and df), Debian packages
# r-cran-rockchalk and r-cran-emmeans. Uses tests/r/ols_data.csv (from ols_gee_reference.R).
# Output (committed): tests/r/probing_reference.csv
suppressPackageStartupMessages({library(rockchalk); library(emmeans)})
pdf(NULL)  # plotSlopes draws; keep Rplots.pdf out of the repository
out <- "tests/r"
fmt <- function(x) trimws(formatC(as.numeric(x), digits = 17, format = "g"))
d <- read.csv(file.path(out, "ols_data.csv"))
rows <- list()
add <- function(what, w, z, est, se, df) {
  rows[[length(rows) + 1]] <<- data.frame(what = what, w = fmt(w), z = fmt(z),
                                          estimate = fmt(est), se = fmt(se), df = fmt(df))
}
# model 1: classical covariance, slopes at w = 2, 3, 4.5, and the JN roots
m1 <- lm(y ~ x * w, data = d)
ps <- plotSlopes(m1, plotx = "x", modx = "w", modxVals = c(2, 3, 4.5), plotPoints = FALSE)
ts <- testSlopes(ps)
h <- ts$hypotests
for (i in seq_len(nrow(h))) add("m1_slope", h[i, 1], NA, h$slope[i], h[i, "Std. Error"],
                                df.residual(m1))
add("m1_jn_lo", ts$jn$roots[["lo"]], NA, NA, NA, df.residual(m1))
add("m1_jn_hi", ts$jn$roots[["hi"]], NA, NA, NA, df.residual(m1))
# model 3: slopes of x on the (w, z) grid and the conditional x:w interaction
m3 <- lm(y ~ x * w * z, data = d)
tr <- summary(emtrends(m3, ~ w * z, var = "x", at = list(w = c(2, 3, 4.5), z = c(-0.2, 0.8))))
for (i in seq_len(nrow(tr))) add("m3_slope", tr$w[i], tr$z[i], tr$x.trend[i], tr$SE[i],
                                 tr$df[i])
write.csv(do.call(rbind, rows), file.path(out, "probing_reference.csv"), row.names = FALSE,
          quote = FALSE)
cat("wrote", file.path(out, "probing_reference.csv"), "\n")
