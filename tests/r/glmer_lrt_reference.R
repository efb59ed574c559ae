# Reference values for tests/models/glmm/test_glmm_compare.py: likelihood-ratio tests of
# nested binomial and Poisson mixed models, lme4's anova(m0, m1, ...) on glmer fits.
#
# Run from the repository root:   Rscript tests/r/glmer_lrt_reference.R
# Written with: R 4.2.2 Patched, lme4 1.1-31 (versions also in glmer_lrt.csv's 'lme4').
# Data: tests/r/cbpp_data.csv and tests/r/glmer_attendance.csv (written by
# glmer_reference.R). Fits use the same tight control as glmer_reference.R (see there
# why glmer's default PIRLS tolerance moves the logLik by ~3e-4).
# Output: tests/r/glmer_lrt.csv  comparison, model, npar, AIC, BIC, logLik, deviance,
#         Chisq, Df, p  (one row per model in anova's order, fewest parameters first)
suppressPackageStartupMessages(library(lme4))
out_dir <- "tests/r"
tight <- glmerControl(optimizer = "nloptwrap", tolPwrss = 1e-14,
                      optCtrl = list(maxeval = 1e5, xtol_rel = 1e-14, ftol_rel = 1e-16,
                                     xtol_abs = 1e-14, ftol_abs = 1e-16),
                      check.conv.singular = "ignore")
cbpp_d <- read.csv(file.path(out_dir, "cbpp_data.csv"))
cbpp_d$period <- factor(cbpp_d$period)
att <- read.csv(file.path(out_dir, "glmer_attendance.csv"))

g <- function(f, d, fam = binomial) glmer(f, data = d, family = fam, control = tight)
comparisons <- list(
  cbpp = list(
    m0 = g(cbind(incidence, size - incidence) ~ 1 + (1 | herd), cbpp_d),
    m1 = g(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp_d)),
  attendance = list(
    additive = g(cbind(attended, scheduled - attended) ~ alliance + age_c + autonomy_c +
                   (1 | therapist), att),
    moderation = g(cbind(attended, scheduled - attended) ~ alliance * (age_c + autonomy_c) +
                     (1 | therapist), att),
    nested = g(cbind(attended, scheduled - attended) ~ alliance * (age_c + autonomy_c) +
                 (1 | therapist/patient), att)),
  poisson = list(
    m0 = g(completed ~ alliance + age_c + (1 | therapist), att, poisson),
    m1 = g(completed ~ alliance * age_c + (1 | therapist), att, poisson))
)
rows <- list()
for (nm in names(comparisons)) {
  ms <- comparisons[[nm]]
  a <- do.call(anova, c(unname(ms), list(model.names = names(ms))))
  rows[[nm]] <- data.frame(comparison = nm, model = rownames(a), npar = a$npar, AIC = a$AIC,
                           BIC = a$BIC, logLik = a$logLik, deviance = a$deviance,
                           Chisq = a$Chisq, Df = a$Df, p = a[["Pr(>Chisq)"]],
                           lme4 = as.character(packageVersion("lme4")))
}
write.csv(do.call(rbind, rows), file.path(out_dir, "glmer_lrt.csv"), row.names = FALSE)
