# Reference values for tests/test_formula_terms.py::test_fit_mixed_on_crossed_sums_matches_lmer:
# the within/between split of a predictor crossed with two moderators, written
# (x_w + x_b) * (m + s), fitted by lme4/lmerTest.
#
# Run from the repository root:   Rscript tests/r/mixed_cross_reference.R
# Written with: R 4.2.2, lme4 1.1-31, lmerTest 3.1-3. Input: tests/r/nested_data.csv
# (written by mixed_reference.R); x_b is the patient mean of x, x_w = x - x_b, s the
# session number minus 3. Output: tests/r/mixed_cross_fixef.csv (term, estimate, se,
# df (Satterthwaite)).
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
})
out_dir <- "tests/r"
fmt <- function(x) trimws(formatC(as.numeric(x), digits = 17, format = "g"))
d <- read.csv(file.path(out_dir, "nested_data.csv"))
d$x_b <- ave(d$x, d$therapist, d$patient)
d$x_w <- d$x - d$x_b
d$s <- d$session - 3
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))
fit <- lmer(y ~ (x_w + x_b) * (m + s) + (1 | therapist/patient), data = d, REML = TRUE,
            control = ctrl)
co <- summary(fit, ddf = "Satterthwaite")$coefficients
write.csv(data.frame(term = rownames(co), estimate = fmt(co[, "Estimate"]),
                     se = fmt(co[, "Std. Error"]), df = fmt(co[, "df"])),
          file.path(out_dir, "mixed_cross_fixef.csv"), row.names = FALSE, quote = FALSE)
cat("wrote", file.path(out_dir, "mixed_cross_fixef.csv"), "\n")
