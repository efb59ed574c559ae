# Reference values for tests/test_fast_reml.py (batched REML engine vs lme4 + lmerTest).
#
# Run from the repository root:   Rscript tests/r/fast_reml_reference.R
# Written with R 4.2, lme4 1.1-31, lmerTest 3.1-3 (versions are written into the output).
#
# Three simulated therapist/patient/session data sets (all seeded here):
#   nested      30 therapists x 4 patients x 5 sessions with ~20% dropout,
#               y ~ alliance * (age + autonomy) + (1 | therapist/patient)
#   boundary    the same layout with no therapist variance in the outcome
#               (lme4 estimates the therapist variance at exactly zero)
#   onefactor   y ~ alliance * autonomy + (1 | therapist), unequal caseloads
# Outputs (tests/r/): fast_reml_data.csv (all rows, column `set`),
#   fast_reml_reference.csv (set, term, estimate, se, df; then rows for sigma2, the
#   variance components, logLik (REML) and logLik_ML), one row per quantity.
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
})
out <- "tests/r"
fmt <- function(x) ifelse(is.na(x), NA, trimws(formatC(x, digits = 17, format = "g")))
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5),
                    check.conv.singular = "ignore")

make_nested <- function(seed, sd_t) {
  set.seed(seed)
  nt <- 30; np <- 4; ns <- 5
  d <- expand.grid(session = 1:ns, patient = 1:np, therapist = 1:nt)
  d$patient <- (d$therapist - 1) * np + d$patient
  ut <- rnorm(nt); up <- rnorm(nt * np)
  d$alliance <- 0.5 * ut[d$therapist] + 0.7 * up[d$patient] + rnorm(nrow(d), 0, 0.5)
  d$age <- round(rnorm(nt * np, 50, 14))[d$patient]
  d$autonomy <- rnorm(nt * np)[d$patient]
  d$y <- 0.5 + 0.3 * d$alliance + 0.01 * d$age + 0.1 * d$autonomy +
    0.004 * d$alliance * d$age + 0.15 * d$alliance * d$autonomy +
    rnorm(nt, 0, sd_t)[d$therapist] + rnorm(nt * np, 0, 0.6)[d$patient] + rnorm(nrow(d))
  keep <- runif(nrow(d)) > 0.2
  d[keep, ]
}

nested <- make_nested(20261126, 0.4)
# first seed (from 1) whose REML fit puts the therapist variance at zero
for (seed in 1:200) {
  boundary <- make_nested(seed, 0.0)
  b_fit <- lmer(y ~ alliance * (age + autonomy) + (1 | therapist/patient), data = boundary,
                REML = TRUE, control = ctrl)
  if (isSingular(b_fit)) break
}
set.seed(99)
sizes <- sample(3:12, 12, replace = TRUE)
one <- data.frame(therapist = rep(seq_along(sizes), sizes))
one$alliance <- rnorm(nrow(one)); one$autonomy <- rnorm(nrow(one))
one$y <- 1 + 0.4 * one$alliance - 0.2 * one$autonomy + 0.3 * one$alliance * one$autonomy +
  rnorm(length(sizes), 0, 0.7)[one$therapist] + rnorm(nrow(one))
one$patient <- seq_len(nrow(one)); one$age <- 50; one$session <- 1

sets <- list(
  nested = list(d = nested, f = y ~ alliance * (age + autonomy) + (1 | therapist/patient)),
  boundary = list(d = boundary, f = y ~ alliance * (age + autonomy) + (1 | therapist/patient)),
  onefactor = list(d = one, f = y ~ alliance * autonomy + (1 | therapist))
)

rows <- list(); datas <- list()
for (nm in names(sets)) {
  d <- sets[[nm]]$d
  fit <- lmer(sets[[nm]]$f, data = d, REML = TRUE, control = ctrl)
  ml <- lmer(sets[[nm]]$f, data = d, REML = FALSE, control = ctrl)
  co <- summary(fit)$coefficients  # lmerTest: Satterthwaite df
  rows[[length(rows) + 1]] <- data.frame(set = nm, term = rownames(co),
    estimate = co[, "Estimate"], se = co[, "Std. Error"], df = co[, "df"])
  vc <- as.data.frame(VarCorr(fit))
  rows[[length(rows) + 1]] <- data.frame(set = nm, term = paste0("var:", vc$grp),
    estimate = vc$vcov, se = NA, df = NA)
  rows[[length(rows) + 1]] <- data.frame(set = nm,
    term = c("logLik", "logLik_ML", "isSingular"),
    estimate = c(as.numeric(logLik(fit)), as.numeric(logLik(ml)), as.numeric(isSingular(fit))),
    se = NA, df = NA)
  datas[[nm]] <- data.frame(set = nm, therapist = d$therapist, patient = d$patient,
    alliance = d$alliance, age = d$age, autonomy = d$autonomy, y = d$y)
}
ref <- do.call(rbind, rows)
ref$estimate <- fmt(ref$estimate); ref$se <- fmt(ref$se); ref$df <- fmt(ref$df)
ref <- rbind(ref, data.frame(set = "versions", term = c("R", "lme4", "lmerTest"),
  estimate = c(R.version.string, as.character(packageVersion("lme4")),
               as.character(packageVersion("lmerTest"))), se = NA, df = NA))
write.csv(ref, file.path(out, "fast_reml_reference.csv"), row.names = FALSE)
dat <- do.call(rbind, datas)
for (c in c("alliance", "age", "autonomy", "y")) dat[[c]] <- fmt(dat[[c]])
write.csv(dat, file.path(out, "fast_reml_data.csv"), row.names = FALSE)
