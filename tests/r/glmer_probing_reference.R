# Reference values for tests/probing/test_probing_response.py: simple slopes of a glmer
# fit on the link (logit) and the response (probability) scale by emmeans::emtrends.
#
# Run from the repository root:   Rscript tests/r/glmer_probing_reference.R
# Written with: R 4.2.2 Patched (2022-11-10 r83330), lme4 1.1-31, emmeans 1.8.4-1.
# Uses tests/r/glmer_attendance.csv (made by glmer_reference.R) and the same tight glmer
# control as glmer_reference.R. emtrends evaluates the slope of alliance at the mean of
# alliance and of every other covariate (cov.reduce = mean), at autonomy_c = -1, 0, 1;
# regrid = "response" gives the slope of the probability (a finite difference of the
# back-transformed prediction, delta-method SE).
# Output: glmer_emtrends.csv  scale, autonomy_c, trend, se (versions in the columns R,
#         lme4, emmeans).
suppressPackageStartupMessages({
  library(lme4)
  library(emmeans)
})
out_dir <- "tests/r"
att <- read.csv(file.path(out_dir, "glmer_attendance.csv"))
tight <- glmerControl(optimizer = "nloptwrap", tolPwrss = 1e-14,
                      optCtrl = list(maxeval = 1e5, xtol_rel = 1e-14, ftol_rel = 1e-16,
                                     xtol_abs = 1e-14, ftol_abs = 1e-16),
                      check.conv.singular = "ignore")
fit <- glmer(cbind(attended, scheduled - attended) ~ alliance * (age_c + autonomy_c) +
               (1 | therapist/patient), data = att, family = binomial, control = tight)
at <- list(autonomy_c = c(-1, 0, 1))
link <- as.data.frame(summary(emtrends(fit, ~ autonomy_c, var = "alliance", at = at)))
resp <- as.data.frame(summary(emtrends(fit, ~ autonomy_c, var = "alliance", at = at,
                                       regrid = "response")))
out <- rbind(
  data.frame(scale = "link", autonomy_c = link$autonomy_c, trend = link$alliance.trend,
             se = link$SE),
  data.frame(scale = "response", autonomy_c = resp$autonomy_c, trend = resp$alliance.trend,
             se = resp$SE)
)
out$R <- R.version.string
out$lme4 <- as.character(packageVersion("lme4"))
out$emmeans <- as.character(packageVersion("emmeans"))
write.csv(out, file.path(out_dir, "glmer_emtrends.csv"), row.names = FALSE)
