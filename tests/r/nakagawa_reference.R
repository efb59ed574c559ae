# Independent Nakagawa R2 for tests/test_mixed.py::test_r2_matches_performance_r2_nakagawa:
# performance::r2_nakagawa (Debian r-cran-performance 0.10.2) on the lme4 fits of the
# reference data sets (the *_info.csv values are computed by hand in mixed_reference.R).
# Run from the repository root:  Rscript tests/r/nakagawa_reference.R
# Output: tests/r/nakagawa_performance.csv (case, r2_marginal, r2_conditional)
suppressPackageStartupMessages({library(lme4); library(performance)})
fmt <- function(x) trimws(formatC(as.numeric(x), digits = 17, format = "g"))
cases <- list(
  sleepstudy = Reaction ~ Days + (Days | Subject),
  nested = y ~ x * m + (1 | therapist/patient),
  unbalanced = y ~ x * m + (1 + x | g),
  penicillin = diameter ~ 1 + (1 | plate) + (1 | sample))
rows <- list()
for (nm in names(cases)) {
  d <- read.csv(file.path("tests/r", paste0(nm, "_data.csv")))
  fit <- lmer(cases[[nm]], data = d, REML = TRUE,
              control = lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5)))
  r2 <- suppressWarnings(r2_nakagawa(fit))
  rows[[nm]] <- data.frame(case = nm, r2_marginal = fmt(r2$R2_marginal),
                           r2_conditional = fmt(r2$R2_conditional))
}
write.csv(do.call(rbind, rows), "tests/r/nakagawa_performance.csv", row.names = FALSE,
          quote = FALSE)
cat("wrote tests/r/nakagawa_performance.csv\n")
