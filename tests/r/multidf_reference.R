# Reference values for tests/models/test_anova.py: multi-df inference in linear mixed
# models -- Type III F tests (lmerTest::anova), multi-row contrasts (lmerTest::contest),
# likelihood-ratio tests (lme4's anova(m0, m1), which refits REML fits by ML) and profile
# confidence intervals of variance components (lme4's confint(method = "profile"), which
# profiles the ML deviance).
#
# Run from the repository root:   Rscript tests/r/multidf_reference.R
# Written with R 4.2.2 Patched (2022-11-10 r83330), lme4 1.1-31, lmerTest 3.1-3,
# pbkrtest 0.5.2 (versions also in mdf_info.csv). Uses the data sets written by
# mixed_reference.R (nested, sleepstudy, unbalanced).
#
# Outputs (all in tests/r/):
#   mdf_anova.csv     model, ddf, term, SumSq, MeanSq, NumDF, DenDF, F, p
#   mdf_contest.csv   model, ddf, L (rows separated by ";"), SumSq, MeanSq, NumDF, DenDF, F, p
#   mdf_lrt.csv       comparison, model, npar, AIC, BIC, logLik, deviance, Chisq, Df, p
#   mdf_profile.csv   model, parm (lme4's oldNames = FALSE), lower, upper (95%)
#   mdf_info.csv      versions
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(pbkrtest)
})
out <- "tests/r"
fmt <- function(x) trimws(formatC(as.numeric(x), digits = 17, format = "g"))
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5),
                    check.conv.singular = "ignore")
rd <- function(name) read.csv(file.path(out, paste0(name, "_data.csv")),
                              stringsAsFactors = FALSE)
nested <- rd("nested"); unbalanced <- rd("unbalanced"); sleep <- rd("sleepstudy")
fits <- list(
  nested = lmer(y ~ x * m + (1 | therapist/patient), nested, control = ctrl),
  nested_slope = lmer(y ~ x * m + (1 + x | therapist) + (1 | therapist:patient), nested,
                      control = ctrl),
  unbalanced = lmer(y ~ x * m + (1 + x | g), unbalanced, control = ctrl),
  sleepstudy = lmer(Reaction ~ Days + (Days | Subject), sleep, control = ctrl),
  # a categorical main effect (5 sessions, treatment coding) outside any interaction
  nested_factor = lmer(y ~ x * m + factor(session) + (1 | therapist/patient), nested,
                       control = ctrl)
)
ftab <- function(model, ddf, tab, what) {
  data.frame(model = model, ddf = ddf, what = what, SumSq = fmt(tab[["Sum Sq"]]),
             MeanSq = fmt(tab[["Mean Sq"]]), NumDF = fmt(tab$NumDF), DenDF = fmt(tab$DenDF),
             F = fmt(tab[["F value"]]), p = fmt(tab[["Pr(>F)"]]))
}
an <- list(); ct <- list()
Ls <- list(
  nested = rbind(c(0, 1, 0, 0), c(0, 0, 0, 1)),
  nested_slope = rbind(c(0, 1, 0, 1), c(0, 0, 1, 0), c(0, 0, 0, 1)),
  unbalanced = rbind(c(0, 1, 0, 50), c(0, 0, 1, 0)),
  sleepstudy = rbind(c(1, 0), c(1, 10)),
  nested_factor = rbind(c(0, 0, 0, 1, -1, 0, 0, 0), c(0, 0, 0, 0, 0, 0, 0, 1))
)
for (name in names(fits)) {
  for (ddf in c("Satterthwaite", "Kenward-Roger")) {
    if (name != "sleepstudy") {
      a <- anova(fits[[name]], type = 3, ddf = ddf)
      an[[length(an) + 1]] <- ftab(name, ddf, a, rownames(a))
    }
    L <- Ls[[name]]
    c1 <- contest(fits[[name]], L, joint = TRUE, ddf = ddf)
    ct[[length(ct) + 1]] <- ftab(name, ddf, c1,
                                 paste(apply(L, 1, paste, collapse = " "), collapse = ";"))
  }
}
write.csv(do.call(rbind, an), file.path(out, "mdf_anova.csv"), row.names = FALSE)
write.csv(do.call(rbind, ct), file.path(out, "mdf_contest.csv"), row.names = FALSE)

# likelihood-ratio tests (lme4::anova refits REML fits by ML)
m_add <- lmer(y ~ x + m + (1 | therapist/patient), nested, control = ctrl)
m_t <- lmer(y ~ x * m + (1 | therapist), nested, control = ctrl)
s_int <- lmer(Reaction ~ Days + (1 | Subject), sleep, control = ctrl)
lrt <- list(
  fixed = suppressMessages(anova(m_add, fits$nested)),
  random = suppressMessages(anova(m_t, fits$nested)),
  slope = suppressMessages(anova(s_int, fits$sleepstudy))
)
lr <- list()
for (nm in names(lrt)) {
  a <- lrt[[nm]]
  lr[[nm]] <- data.frame(comparison = nm, row = seq_len(nrow(a)), npar = fmt(a$npar),
                         AIC = fmt(a$AIC), BIC = fmt(a$BIC), logLik = fmt(a$logLik),
                         deviance = fmt(a$deviance), Chisq = fmt(a$Chisq), Df = fmt(a$Df),
                         p = fmt(a[["Pr(>Chisq)"]]))
}
write.csv(do.call(rbind, lr), file.path(out, "mdf_lrt.csv"), row.names = FALSE)

# profile confidence intervals of the variance components
pr <- list()
for (name in c("nested", "sleepstudy", "unbalanced")) {
  ci <- suppressWarnings(confint(fits[[name]], parm = "theta_", method = "profile",
                                 oldNames = FALSE))
  pr[[name]] <- data.frame(model = name, parm = rownames(ci), lower = fmt(ci[, 1]),
                           upper = fmt(ci[, 2]))
}
write.csv(do.call(rbind, pr), file.path(out, "mdf_profile.csv"), row.names = FALSE)
write.csv(data.frame(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                     lmerTest = as.character(packageVersion("lmerTest")),
                     pbkrtest = as.character(packageVersion("pbkrtest"))),
          file.path(out, "mdf_info.csv"), row.names = FALSE)
cat("wrote mdf_*.csv to", out, "\n")
