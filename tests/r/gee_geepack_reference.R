# Reference values for tests/test_gee_geepack.py: fit_gee's geepack-compatible working
# correlation estimators (exchangeable and AR-1) against geepack::geeglm, on data with
# unequal cluster sizes and (binomial) numbers of trials that vary within clusters.
#
# Run from the repository root:   Rscript tests/r/gee_geepack_reference.R
# Written with: R 4.2.2, geepack 1.3.9 (Debian r-cran-geepack), lme4 1.1-31 (cbpp data).
# Outputs (committed):
#   tests/r/gee_geepack_data.csv       simulated attendance: 60 patients with 2-8 sessions,
#                                      1-6 scheduled per session, attended of scheduled,
#                                      a gaussian outcome, alliance (session), age (patient)
#   tests/r/gee_geepack_reference.csv  case, control, term, estimate, se (sandwich), alpha
#                                      (working correlation), gamma (scale)
# control "tight": geese.control(epsilon = 1e-12, maxit = 500), the converged solution;
# control "default": geepack's defaults (epsilon = 1e-4, maxit = 25), what users see.
suppressPackageStartupMessages({library(geepack); library(lme4)})
out <- "tests/r"
fmt <- function(x) trimws(formatC(as.numeric(x), digits = 17, format = "g"))
cat("R", R.version$major, R.version$minor, "geepack", as.character(packageVersion("geepack")),
    "\n")

set.seed(20261203)
np <- 60
size <- sample(2:8, np, replace = TRUE)
patient <- rep(seq_len(np), size)
session <- unlist(lapply(size, seq_len))
n <- length(patient)
u <- rep(rnorm(np, 0, 0.7), size)
age <- rep(round(rnorm(np, 55, 12)), size)
age_c <- age - mean(age[!duplicated(patient)])
alliance <- rnorm(n, 0, 1) + rep(rnorm(np, 0, 0.5), size)
# AR(1)-like session-to-session drift within patient
e <- unlist(lapply(size, function(k) as.numeric(arima.sim(list(ar = 0.6), k, sd = 0.5))))
eta <- 0.4 + 0.5 * alliance + 0.02 * age_c + 0.015 * alliance * age_c + u + e
scheduled <- sample(1:6, n, replace = TRUE)
attended <- rbinom(n, scheduled, plogis(eta))
score <- 2 + 0.6 * alliance - 0.03 * age_c + 0.02 * alliance * age_c + u + e +
  rnorm(n, 0, 0.8)
d <- data.frame(patient = patient, session = session, alliance = alliance, age_c = age_c,
                scheduled = scheduled, attended = attended, score = score)
write.csv(data.frame(patient = patient, session = session, alliance = fmt(alliance),
                     age_c = fmt(age_c), scheduled = scheduled, attended = attended,
                     score = fmt(score)),
          file.path(out, "gee_geepack_data.csv"), row.names = FALSE, quote = FALSE)

data(cbpp, package = "lme4")
cbpp <- cbpp[order(cbpp$herd, cbpp$period), ]
cbpp$herd <- as.integer(cbpp$herd)
cbpp$wave <- as.integer(cbpp$period)

rows <- list()
add <- function(case, control, m) {
  s <- summary(m)$coefficients
  a <- m$geese$alpha
  rows[[length(rows) + 1]] <<- data.frame(
    case = case, control = control, term = rownames(s), estimate = fmt(s[, "Estimate"]),
    se = fmt(s[, "Std.err"]), alpha = fmt(if (length(a) == 0) 0 else a[1]),
    gamma = fmt(m$geese$gamma[1]), row.names = NULL)
}
controls <- list(tight = geese.control(epsilon = 1e-12, maxit = 500),
                 default = geese.control())
for (ctl in names(controls)) {
  cc <- controls[[ctl]]
  for (cs in c("independence", "exchangeable", "ar1")) {
    add(paste0("binomial_", cs), ctl,
        geeglm(cbind(attended, scheduled - attended) ~ alliance * age_c, id = patient,
               waves = session, data = d, family = binomial, corstr = cs, control = cc))
    add(paste0("gaussian_", cs), ctl,
        geeglm(score ~ alliance * age_c, id = patient, waves = session, data = d,
               family = gaussian, corstr = cs, control = cc))
  }
  for (cs in c("exchangeable", "ar1")) {
    add(paste0("cbpp_", cs), ctl,
        geeglm(cbind(incidence, size - incidence) ~ period, id = herd, waves = wave,
               data = cbpp, family = binomial, corstr = cs, control = cc))
  }
}
write.csv(do.call(rbind, rows), file.path(out, "gee_geepack_reference.csv"),
          row.names = FALSE, quote = FALSE)
cat("wrote", file.path(out, "gee_geepack_reference.csv"), "\n")
