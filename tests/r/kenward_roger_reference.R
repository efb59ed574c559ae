# Reference values for tests/models/lmm/test_kenward_roger.py: Kenward-Roger adjusted
# covariance, df, simple slopes, contrasts and Johnson-Neyman bounds.
#
# Run from the repository root:   Rscript tests/r/kenward_roger_reference.R
# Written with R 4.2.2 Patched (2022-11-10 r83330), lme4 1.1-31, lmerTest 3.1-3,
# pbkrtest 0.5.2, emmeans 1.8.4-1 (Debian packages; versions also in kr_info.csv).
# Uses the data sets written by mixed_reference.R (nested, sleepstudy, unbalanced,
# penicillin).
#
# Outputs (all in tests/r/):
#   kr_<name>_fixef.csv   term, estimate, se and df as summary(fit, ddf = "Kenward-Roger")
#                         (lmerTest: SE from pbkrtest::vcovAdj, df from pbkrtest::Lb_ddf)
#   kr_<name>_vcov.csv    pbkrtest::vcovAdj(fit) (row/column order of fixef)
#   kr_contrast.csv       lmerTest::contest1D(fit, L, ddf = "Kenward-Roger")
#   kr_slopes.csv         emtrends(fit, ~ m, var = "x", lmer.df = "kenward-roger")
#   kr_jn.csv             Johnson-Neyman bounds of the slope of x in m: roots of
#                         |b(m)| / se_A(m) = qt(0.975, df_KR(m)), found with uniroot on
#                         pbkrtest's adjusted covariance and Lb_ddf
#   kr_info.csv           versions
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(pbkrtest)
  library(emmeans)
})
out <- "tests/r"
fmt <- function(x) trimws(formatC(as.numeric(x), digits = 17, format = "g"))
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5),
                    check.conv.singular = "ignore")
emm_options(pbkrtest.limit = 1e5, lmerTest.limit = 1e5)
rd <- function(name) read.csv(file.path(out, paste0(name, "_data.csv")),
                              stringsAsFactors = FALSE)
models <- list(
  nested = list(data = "nested", f = y ~ x * m + (1 | therapist/patient)),
  nested_slope = list(data = "nested",
                      f = y ~ x * m + (1 + x | therapist) + (1 | therapist:patient)),
  sleepstudy = list(data = "sleepstudy", f = Reaction ~ Days + (Days | Subject)),
  unbalanced = list(data = "unbalanced", f = y ~ x * m + (1 + x | g)),
  penicillin = list(data = "penicillin", f = diameter ~ 1 + (1 | plate) + (1 | sample))
)
contrasts <- list(nested = c(0, 1, 0, 2), nested_slope = c(0, 1, 0, -1),
                  sleepstudy = c(1, 10), unbalanced = c(0, 1, 0, 50))
slope_at <- list(nested = c(-1.5, 0, 1), nested_slope = c(-1.5, 0, 1),
                 unbalanced = c(40, 50, 65))
con_rows <- list(); slope_rows <- list(); jn_rows <- list()
for (name in names(models)) {
  d <- rd(models[[name]]$data)
  fit <- lmer(models[[name]]$f, data = d, REML = TRUE, control = ctrl)
  s <- summary(fit, ddf = "Kenward-Roger")$coefficients
  write.csv(data.frame(term = rownames(s), estimate = fmt(s[, "Estimate"]),
                       se = fmt(s[, "Std. Error"]), df = fmt(s[, "df"])),
            file.path(out, paste0("kr_", name, "_fixef.csv")), row.names = FALSE,
            quote = TRUE)
  VA <- as.matrix(vcovAdj(fit))
  V0 <- as.matrix(vcov(fit))
  vc <- as.data.frame(matrix(fmt(VA), nrow(VA)))
  names(vc) <- names(fixef(fit))
  write.csv(vc, file.path(out, paste0("kr_", name, "_vcov.csv")), row.names = FALSE)
  if (!is.null(contrasts[[name]])) {
    L <- contrasts[[name]]
    ct <- contest1D(fit, L, ddf = "Kenward-Roger")
    con_rows[[name]] <- data.frame(model = name, L = paste(L, collapse = " "),
                                   estimate = fmt(ct$Estimate), se = fmt(ct[["Std. Error"]]),
                                   df = fmt(ct$df), t = fmt(ct[["t value"]]))
  }
  if (!is.null(slope_at[[name]])) {
    tr <- summary(emtrends(fit, ~ m, var = "x", at = list(m = slope_at[[name]]),
                           lmer.df = "kenward-roger"))
    slope_rows[[name]] <- data.frame(model = name, m = fmt(tr$m), estimate = fmt(tr$x.trend),
                                     se = fmt(tr$SE), df = fmt(tr$df))
    b <- fixef(fit)
    Lm <- function(mv) c(0, 1, 0, mv)
    VAfull <- vcovAdj(fit)
    crit <- function(mv) {
      L <- Lm(mv)
      abs(sum(L * b)) / sqrt(drop(t(L) %*% VA %*% L)) - qt(0.975, Lb_ddf(L, V0, VAfull))
    }
    rng <- range(d$m); pad <- 3 * diff(rng)
    grid <- seq(rng[1] - pad, rng[2] + pad, length.out = 400)
    vals <- sapply(grid, crit)
    for (i in which(diff(sign(vals)) != 0)) {
      r <- uniroot(crit, grid[c(i, i + 1)], tol = 1e-12)$root
      jn_rows[[length(jn_rows) + 1]] <- data.frame(model = name, bound = fmt(r),
                                                   df = fmt(Lb_ddf(Lm(r), V0, VAfull)))
    }
  }
}
write.csv(do.call(rbind, con_rows), file.path(out, "kr_contrast.csv"), row.names = FALSE)
write.csv(do.call(rbind, slope_rows), file.path(out, "kr_slopes.csv"), row.names = FALSE)
write.csv(do.call(rbind, jn_rows), file.path(out, "kr_jn.csv"), row.names = FALSE)
write.csv(data.frame(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                     lmerTest = as.character(packageVersion("lmerTest")),
                     pbkrtest = as.character(packageVersion("pbkrtest")),
                     emmeans = as.character(packageVersion("emmeans"))),
          file.path(out, "kr_info.csv"), row.names = FALSE)
cat("wrote kr_*.csv to", out, "\n")
