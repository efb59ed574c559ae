# Reference values for tests/test_mixed.py (fit_mixed vs lme4 + lmerTest).
#
# Run from the repository root:   Rscript tests/r/mixed_reference.R
# Written with: R 4.2.2 Patched (2022-11-10 r83330), lme4 1.1-31, lmerTest 3.1-3
# (the versions actually used are also written into every *_info.csv file).
#
# Outputs (all in tests/r/):
#   <name>_data.csv    the input data (sleepstudy and Penicillin are from lme4, GPL-2,
#                      used here as test data only; the other sets are simulated below)
#   <name>_fixef.csv   term, estimate, se, df (Satterthwaite, lmerTest), t, p
#   <name>_varcomp.csv group, var1, var2, vcov, sdcor (as.data.frame(VarCorr(fit)))
#   <name>_info.csv    logLik REML, logLik ML, sigma, n, isSingular, R2 (Nakagawa, by hand),
#                      R / lme4 / lmerTest versions
#   <name>_contrast.csv  lmerTest::contest for a non-trivial contrast (where given)
#   <name>_ml_fixef.csv  fixed effects of the ML fit (REML = FALSE)
#   <name>_ranef.csv   conditional modes (BLUPs) of the REML fit
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
})

out_dir <- "tests/r"
versions <- c(
  R = R.version.string,
  lme4 = as.character(packageVersion("lme4")),
  lmerTest = as.character(packageVersion("lmerTest"))
)
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5),
                    check.conv.singular = "ignore")

# Nakagawa & Schielzeth (2013) R2 with Johnson (2014) random-slope extension, by hand:
# sigma2_f = var(X beta) (n - 1 denominator), sigma2_k = mean_i z_i' Sigma_k z_i.
nakagawa <- function(fit) {
  X <- getME(fit, "X")
  vf <- var(as.vector(X %*% fixef(fit)))
  vc <- VarCorr(fit)
  mf <- model.frame(fit)
  vr <- 0
  for (nm in names(vc)) {
    S <- as.matrix(vc[[nm]])
    cn <- colnames(S)
    Z <- sapply(cn, function(v) if (v == "(Intercept)") rep(1, nrow(mf)) else mf[[v]])
    Z <- matrix(Z, nrow = nrow(mf))
    vr <- vr + mean(rowSums((Z %*% S) * Z))
  }
  ve <- sigma(fit)^2
  c(r2_marginal = vf / (vf + vr + ve), r2_conditional = (vf + vr) / (vf + vr + ve))
}

write_ref <- function(name, formula, data, contrast = NULL) {
  write.csv(data, file.path(out_dir, paste0(name, "_data.csv")), row.names = FALSE)
  fit <- lmer(formula, data = data, REML = TRUE, control = ctrl)
  fit_ml <- lmer(formula, data = data, REML = FALSE, control = ctrl)
  co <- summary(fit, ddf = "Satterthwaite")$coefficients
  fe <- data.frame(term = rownames(co), estimate = co[, "Estimate"], se = co[, "Std. Error"],
                   df = co[, "df"], t = co[, "t value"], p = co[, "Pr(>|t|)"])
  write.csv(fe, file.path(out_dir, paste0(name, "_fixef.csv")), row.names = FALSE)
  co_ml <- summary(fit_ml, ddf = "Satterthwaite")$coefficients
  fe_ml <- data.frame(term = rownames(co_ml), estimate = co_ml[, "Estimate"],
                      se = co_ml[, "Std. Error"], df = co_ml[, "df"])
  write.csv(fe_ml, file.path(out_dir, paste0(name, "_ml_fixef.csv")), row.names = FALSE)
  vc <- as.data.frame(VarCorr(fit))
  vc$var1[is.na(vc$var1)] <- ""
  vc$var2[is.na(vc$var2)] <- ""
  write.csv(vc, file.path(out_dir, paste0(name, "_varcomp.csv")), row.names = FALSE)
  vc_ml <- as.data.frame(VarCorr(fit_ml))
  vc_ml$var1[is.na(vc_ml$var1)] <- ""
  vc_ml$var2[is.na(vc_ml$var2)] <- ""
  write.csv(vc_ml, file.path(out_dir, paste0(name, "_ml_varcomp.csv")), row.names = FALSE)
  re <- as.data.frame(ranef(fit))
  re <- data.frame(grpvar = re$grpvar, term = re$term, grp = as.character(re$grp),
                   condval = re$condval)
  write.csv(re, file.path(out_dir, paste0(name, "_ranef.csv")), row.names = FALSE)
  r2 <- nakagawa(fit)
  info <- data.frame(
    key = c("loglik_reml", "loglik_ml", "sigma", "n", "singular", "r2_marginal",
            "r2_conditional", "aic_ml", "bic_ml", "R", "lme4", "lmerTest", "formula"),
    value = c(format(as.numeric(logLik(fit)), digits = 15),
              format(as.numeric(logLik(fit_ml)), digits = 15),
              format(sigma(fit), digits = 15), nrow(model.frame(fit)),
              as.character(isSingular(fit)),
              format(r2[1], digits = 15), format(r2[2], digits = 15),
              format(AIC(fit_ml), digits = 15), format(BIC(fit_ml), digits = 15),
              versions, deparse(formula, width.cutoff = 500))
  )
  write.csv(info, file.path(out_dir, paste0(name, "_info.csv")), row.names = FALSE)
  if (!is.null(contrast)) {
    ct <- contest(fit, L = contrast, joint = FALSE, ddf = "Satterthwaite")
    ct <- data.frame(L = paste(contrast, collapse = " "), estimate = ct$Estimate,
                     se = ct$"Std. Error", df = ct$df, t = ct$"t value", p = ct$"Pr(>|t|)")
    write.csv(ct, file.path(out_dir, paste0(name, "_contrast.csv")), row.names = FALSE)
  }
  invisible(fit)
}

# 1. sleepstudy: correlated random intercept and slope (lme4 data, GPL-2)
data("sleepstudy", package = "lme4")
write_ref("sleepstudy", Reaction ~ Days + (Days | Subject), sleepstudy,
          contrast = c(1, 10))

# 2. nested three-level data: sessions in patients in therapists, alliance x moderator
set.seed(20261126)
n_t <- 12; n_p <- 6; n_s <- 5
therapist <- rep(sprintf("T%02d", 1:n_t), each = n_p * n_s)
patient <- rep(sprintf("P%03d", 1:(n_t * n_p)), each = n_s)
session <- rep(1:n_s, times = n_t * n_p)
u_t <- rnorm(n_t, 0, 0.6)[as.integer(factor(therapist))]
u_p <- rnorm(n_t * n_p, 0, 0.9)[as.integer(factor(patient))]
m_p <- rnorm(n_t * n_p, 0, 1)[as.integer(factor(patient))]
x <- rnorm(length(patient), 0, 1) + 0.5 * u_t
y <- 2 + 0.4 * x + 0.3 * m_p + 0.25 * x * m_p + u_t + u_p + rnorm(length(patient), 0, 1.2)
nested <- data.frame(therapist = therapist, patient = patient, session = session,
                     x = round(x, 6), m = round(m_p, 6), y = round(y, 6))
write_ref("nested", y ~ x * m + (1 | therapist/patient), nested,
          contrast = c(0, 1, 0, 2))

# 3. unbalanced: unequal cluster sizes (some clusters of 1-2 rows), random slope
set.seed(7)
sizes <- c(1, 1, 2, 2, 3, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 2, 40, 3, 9)
g <- rep(sprintf("C%02d", seq_along(sizes)), times = sizes)
gi <- as.integer(factor(g))
b0 <- rnorm(length(sizes), 0, 1.5)[gi]
b1 <- rnorm(length(sizes), 0, 0.5)[gi]
x <- round(rnorm(length(g), 0, 1), 6)
m <- round(rnorm(length(sizes), 50, 10)[gi], 6)
y <- round(10 + (0.8 + b1) * x + 0.05 * m + 0.03 * x * (m - 50) + b0 + rnorm(length(g), 0, 1), 6)
unbalanced <- data.frame(g = g, x = x, m = m, y = y)
write_ref("unbalanced", y ~ x * m + (1 + x | g), unbalanced, contrast = c(0, 1, 0, 50))

# 4. crossed random intercepts (lme4 Penicillin, GPL-2)
data("Penicillin", package = "lme4")
pen <- data.frame(diameter = Penicillin$diameter, plate = as.character(Penicillin$plate),
                  sample = as.character(Penicillin$sample))
write_ref("penicillin", diameter ~ 1 + (1 | plate) + (1 | sample), pen)

# 5. uncorrelated random intercept and slope (||) on sleepstudy
write_ref("sleepstudy_uncorr", Reaction ~ Days + (Days || Subject), sleepstudy)

# 6. zero therapist variance: therapist means of y (and of x) are made identical, so the
#    REML estimate of the therapist variance is 0 (isSingular TRUE in lme4)
set.seed(11)
n_t <- 8; n_p <- 4; n_s <- 4
therapist <- rep(sprintf("T%d", 1:n_t), each = n_p * n_s)
patient <- rep(sprintf("P%02d", 1:(n_t * n_p)), each = n_s)
x <- rnorm(length(patient))
x <- x - ave(x, therapist)
y <- 5 + 0.5 * x + rnorm(n_t * n_p, 0, 0.8)[as.integer(factor(patient))] + rnorm(length(x))
y <- y - ave(y, therapist) + mean(y)
singular <- data.frame(therapist = therapist, patient = patient, x = round(x, 8),
                       y = round(y, 8))
write_ref("singular", y ~ x + (1 | therapist/patient), singular)

# 7. random slope at the outer level plus nested intercepts (MixedLM: exog_re + variance
#    component), on the nested data set
write_ref("nested_slope", y ~ x * m + (1 + x | therapist) + (1 | therapist:patient), nested,
          contrast = c(0, 1, 0, -1))
