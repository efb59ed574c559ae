# Reference values for tests/test_mixed.py::test_formula_features_match_lmertest:
# fit_mixed with C(), I(), a transformation and a ':' product in the fixed part.
#
# Run from the repository root:   Rscript tests/r/mixed_formula_reference.R
# Written with: R 4.2.2, lme4 1.1-31, lmerTest 3.1-3. Input: tests/r/nested_data.csv
# (written by mixed_reference.R). Output: tests/r/formula_fixef.csv (term, estimate, se,
# df (Satterthwaite), t) and tests/r/formula_varcomp.csv (as.data.frame(VarCorr(fit))).
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
})
out_dir <- "tests/r"
fmt <- function(x) trimws(formatC(as.numeric(x), digits = 17, format = "g"))
d <- read.csv(file.path(out_dir, "nested_data.csv"))
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))
# Python: "y ~ x + x:m + C(session) + I(x**2) + np.log(m + 5) + (1 | therapist/patient)"
fit <- lmer(y ~ x + x:m + factor(session) + I(x^2) + log(m + 5) + (1 | therapist/patient),
            data = d, REML = TRUE, control = ctrl)
co <- summary(fit, ddf = "Satterthwaite")$coefficients
write.csv(data.frame(term = rownames(co), estimate = fmt(co[, "Estimate"]),
                     se = fmt(co[, "Std. Error"]), df = fmt(co[, "df"]),
                     t = fmt(co[, "t value"])),
          file.path(out_dir, "formula_fixef.csv"), row.names = FALSE, quote = FALSE)
vc <- as.data.frame(VarCorr(fit))
write.csv(data.frame(grp = vc$grp, vcov = fmt(vc$vcov), sdcor = fmt(vc$sdcor)),
          file.path(out_dir, "formula_varcomp.csv"), row.names = FALSE, quote = FALSE)
cat("wrote", file.path(out_dir, "formula_fixef.csv"), "\n")
