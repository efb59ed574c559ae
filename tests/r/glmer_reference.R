# Reference values for tests/models/glmm/test_glmer_reference.py (fit_mixed with
# family="binomial" / "poisson" vs lme4::glmer).
#
# Run from the repository root:   Rscript tests/r/glmer_reference.R
# Written with: R 4.2.2 Patched (2022-11-10 r83330), lme4 1.1-31, Matrix 1.5-3
# (the versions actually used are also written into glmer_info.csv).
#
# Data:
#   cbpp_data.csv          lme4's cbpp (GPL-2, test data only; written by ols_gee_reference.R)
#   glmer_attendance.csv   simulated here: sessions attended of scheduled per treatment block,
#                          blocks in patients in therapists, unequal caseloads (2-14 patients
#                          per therapist), a crossed 'site' factor, a Poisson count of
#                          home-exercise sessions completed per block
# Outputs (all in tests/r/):
#   glmer_fixef.csv    model, term, estimate, se (vcov(fit): lme4's default use.hessian=TRUE,
#                      the finite-difference Hessian of the deviance in (theta, beta)), z, p
#   glmer_varcomp.csv  model, group, var1, var2, vcov, sdcor (as.data.frame(VarCorr(fit)))
#   glmer_info.csv     model, nAGQ, logLik (lme4's), sat_loglik (sum of the saturated
#                      log-likelihood, see below), n, theta, isSingular, optimizer gap,
#                      versions
#
# Convergence: every reference fit is run twice, with glmer's default control and with a
# tight one (PIRLS tolerance tolPwrss 1e-14 instead of 1e-7; nloptwrap's BOBYQA in both
# stages with x and f tolerances 1e-14 / 1e-16); the tight fit is written. With the
# default tolPwrss = 1e-7
# PIRLS stops a step early and lme4's log-determinant uses the weights of the previous
# iterate: on cbpp that moves the Laplace logLik by 3e-4 and the fixed effects by 1.4e-4
# (relative), more than the tolerances tested (with 1e-10 the larger attendance fits
# still differ by ~1e-5 in logLik). minqa's bobyqa, even with rhoend = 1e-10, stopped
# 1e-5 SE short of the optimum in the nested attendance model (a coefficient that is
# small relative to its SE then differs by 2e-4 relative); nloptwrap goes further. glmer_info.csv records max |default - tight|
# over the fixed effects (`default_gap`) and the logLik (`default_loglik_gap`).
#
# logLik convention: for nAGQ = 1 lme4's logLik is the full Laplace log-likelihood (with
# the binomial coefficient / log(y!) terms); for nAGQ > 1 lme4 leaves out the log-
# likelihood of the saturated model, so logLik(fit) + sat_loglik is the comparable value.
suppressPackageStartupMessages({
  library(lme4)
})

out_dir <- "tests/r"
versions <- c(
  R = R.version.string,
  lme4 = as.character(packageVersion("lme4")),
  Matrix = as.character(packageVersion("Matrix"))
)

# ---- the attendance data -----------------------------------------------------------
set.seed(20261203)
n_ther <- 25
caseload <- sample(2:14, n_ther, replace = TRUE)
ther <- rep(sprintf("T%02d", seq_len(n_ther)), caseload)
n_pat <- length(ther)
pat <- sprintf("P%03d", seq_len(n_pat))
u_ther <- rnorm(n_ther, 0, 0.5)
s_ther <- rnorm(n_ther, 0, 0.25)          # therapist-specific alliance slope
u_pat <- rnorm(n_pat, 0, 0.7)
a_ther <- rnorm(n_ther, 0, 0.35)
a_pat <- rnorm(n_pat, 0, 0.55)
age <- pmin(pmax(round(rnorm(n_pat, 50, 14)), 18), 85)
autonomy <- pmin(pmax(rnorm(n_pat, 5, 1), 1), 7)
blocks <- sample(2:4, n_pat, replace = TRUE)
rows <- rep(seq_len(n_pat), blocks)
ti <- match(ther[rows], sprintf("T%02d", seq_len(n_ther)))
alliance <- pmin(pmax(3.8 + a_ther[ti] + a_pat[rows] + rnorm(length(rows), 0, 0.35), 1), 5)
att <- data.frame(
  therapist = ther[rows],
  patient = pat[rows],
  block = sequence(blocks),
  site = sprintf("S%d", sample(1:8, length(rows), replace = TRUE)),
  alliance = round(alliance, 2),
  age = age[rows],
  autonomy = round(autonomy[rows], 2)
)
att$alliance_c <- att$alliance - 3.8
att$age_c <- att$age - mean(age)
att$autonomy_c <- att$autonomy - mean(autonomy)
att$scheduled <- sample(2:8, nrow(att), replace = TRUE)
site_eff <- c(S1 = 0.3, S2 = -0.2, S3 = 0.1, S4 = -0.4, S5 = 0.2, S6 = 0, S7 = -0.1, S8 = 0.25)
ac <- att$alliance - 3.8
lp <- 0.9 + (0.5 + s_ther[ti]) * ac + 0.01 * att$age_c + 0.2 * att$autonomy_c +
  0.15 * ac * att$autonomy_c + u_ther[ti] + u_pat[rows] + site_eff[att$site]
att$attended <- rbinom(nrow(att), att$scheduled, plogis(lp))
att$completed <- rpois(nrow(att), exp(1.2 + 0.25 * ac + 0.3 * u_ther[ti]))
write.csv(att, file.path(out_dir, "glmer_attendance.csv"), row.names = FALSE)

cbpp_d <- read.csv(file.path(out_dir, "cbpp_data.csv"))
cbpp_d$period <- factor(cbpp_d$period)

# ---- fits -------------------------------------------------------------------------
tight <- glmerControl(optimizer = "nloptwrap", tolPwrss = 1e-14,
                      optCtrl = list(maxeval = 1e5, xtol_rel = 1e-14, ftol_rel = 1e-16,
                                     xtol_abs = 1e-14, ftol_abs = 1e-16),
                      check.conv.singular = "ignore")

models <- list(
  cbpp_laplace = list(f = cbind(incidence, size - incidence) ~ period + (1 | herd),
                      d = cbpp_d, fam = binomial, agq = 1),
  cbpp_agq9 = list(f = cbind(incidence, size - incidence) ~ period + (1 | herd),
                   d = cbpp_d, fam = binomial, agq = 9),
  att_nested = list(f = cbind(attended, scheduled - attended) ~ alliance * (age_c + autonomy_c) +
                      (1 | therapist/patient), d = att, fam = binomial, agq = 1),
  att_slope = list(f = cbind(attended, scheduled - attended) ~ alliance_c + age_c +
                     (1 + alliance_c | therapist), d = att, fam = binomial, agq = 1),
  att_crossed = list(f = cbind(attended, scheduled - attended) ~ alliance + autonomy_c +
                       (1 | therapist) + (1 | site), d = att, fam = binomial, agq = 1),
  att_agq9 = list(f = cbind(attended, scheduled - attended) ~ alliance * autonomy_c +
                    (1 | therapist), d = att, fam = binomial, agq = 9),
  pois_laplace = list(f = completed ~ alliance + age_c + (1 | therapist),
                      d = att, fam = poisson, agq = 1),
  pois_agq9 = list(f = completed ~ alliance + age_c + (1 | therapist),
                   d = att, fam = poisson, agq = 9),
  # a gradient-based first stage stopped at theta = 0 here (the deviance is even in
  # theta, so its finite-difference gradient vanishes on the boundary)
  pois_interaction = list(f = completed ~ alliance * age_c + (1 | therapist),
                          d = att, fam = poisson, agq = 1)
)

fixef_rows <- list()
vc_rows <- list()
info_rows <- list()
for (nm in names(models)) {
  m <- models[[nm]]
  fit <- glmer(m$f, data = m$d, family = m$fam, nAGQ = m$agq, control = tight)
  fit_def <- glmer(m$f, data = m$d, family = m$fam, nAGQ = m$agq)
  co <- summary(fit)$coefficients
  fixef_rows[[nm]] <- data.frame(model = nm, term = rownames(co), estimate = co[, 1],
                                 se = co[, 2], z = co[, 3], p = co[, 4])
  vc <- as.data.frame(VarCorr(fit))
  vc_rows[[nm]] <- data.frame(model = nm, group = vc$grp,
                              var1 = ifelse(is.na(vc$var1), "", vc$var1),
                              var2 = ifelse(is.na(vc$var2), "", vc$var2),
                              vcov = vc$vcov, sdcor = vc$sdcor)
  mf <- model.frame(fit)
  y <- model.response(mf)
  if (is.matrix(y)) {
    sat <- sum(dbinom(y[, 1], rowSums(y), y[, 1] / rowSums(y), log = TRUE))
  } else {
    sat <- sum(dpois(y, y, log = TRUE))
  }
  info_rows[[nm]] <- data.frame(
    model = nm, nAGQ = m$agq, loglik = as.numeric(logLik(fit)), sat_loglik = sat,
    n = nobs(fit), theta = paste(format(getME(fit, "theta"), digits = 17), collapse = ";"),
    singular = isSingular(fit),
    default_gap = max(abs(fixef(fit_def) - fixef(fit))),
    default_loglik_gap = abs(as.numeric(logLik(fit_def)) - as.numeric(logLik(fit))),
    R = versions[["R"]], lme4 = versions[["lme4"]], Matrix = versions[["Matrix"]]
  )
}
write.csv(do.call(rbind, fixef_rows), file.path(out_dir, "glmer_fixef.csv"), row.names = FALSE)
write.csv(do.call(rbind, vc_rows), file.path(out_dir, "glmer_varcomp.csv"), row.names = FALSE)
write.csv(do.call(rbind, info_rows), file.path(out_dir, "glmer_info.csv"), row.names = FALSE)
