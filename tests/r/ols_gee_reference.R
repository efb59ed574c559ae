# Reference values for tests/test_ols.py and tests/test_gee.py.
# Run from the repository root:  Rscript tests/r/ols_gee_reference.R
# Written with R 4.2, sandwich 3.0-2, geepack 1.3.9, lme4 1.1-31 (cbpp data).
# Outputs (committed): tests/r/ols_data.csv, tests/r/ols_reference.csv,
#   tests/r/gee_sim_data.csv, tests/r/cbpp_data.csv, tests/r/gee_reference.csv
suppressPackageStartupMessages({library(sandwich); library(geepack); library(lme4)})
out <- "tests/r"
fmt <- function(x) formatC(x, digits = 17, format = "g")

# ---- OLS: heteroscedastic moderated moderation data -------------------------------
set.seed(20260901)
n <- 150
x <- rnorm(n); w <- rnorm(n, 3, 1.5); z <- rbinom(n, 1, 0.4) + rnorm(n, 0, 0.3)
y <- 1 + 0.5 * x + 0.2 * w - 0.3 * z + 0.25 * x * w + 0.2 * x * w * z +
     rnorm(n, 0, exp(0.4 * x))
d <- data.frame(x = x, w = w, z = z, y = y)
write.csv(data.frame(lapply(d, fmt)), file.path(out, "ols_data.csv"), row.names = FALSE,
          quote = FALSE)
rows <- list()
for (f in c("y ~ x * w", "y ~ x * w + x * z", "y ~ x * w * z")) {
  m <- lm(as.formula(f), data = d)
  for (type in c("const", "HC0", "HC1", "HC2", "HC3", "HC4")) {
    se <- sqrt(diag(vcovHC(m, type = type)))
    rows[[length(rows) + 1]] <- data.frame(formula = f, type = type,
      term = names(coef(m)), estimate = fmt(coef(m)), se = fmt(se))
  }
  # R2 of the model
  rows[[length(rows) + 1]] <- data.frame(formula = f, type = "r2", term = "r2",
    estimate = fmt(summary(m)$r.squared), se = "NA")
}
# nested F of the highest-order term in model 3 (anova of reduced vs full)
full <- lm(y ~ x * w * z, data = d)
red <- update(full, . ~ . - x:w:z)
a <- anova(red, full)
rows[[length(rows) + 1]] <- data.frame(formula = "y ~ x * w * z", type = "anovaF",
  term = "x:w:z", estimate = fmt(a$F[2]), se = fmt(a$`Pr(>F)`[2]))
write.csv(do.call(rbind, rows), file.path(out, "ols_reference.csv"), row.names = FALSE)

# ---- GEE ---------------------------------------------------------------------------
gee_rows <- list()
add_gee <- function(tag, m) {
  s <- summary(m)$coefficients
  gee_rows[[length(gee_rows) + 1]] <<- data.frame(case = tag, term = rownames(s),
    estimate = fmt(s[, "Estimate"]), se = fmt(s[, "Std.err"]),
    alpha = fmt(if (length(m$geese$alpha) == 0) 0 else m$geese$alpha[1]),
    row.names = NULL)
}
data(cbpp, package = "lme4")
cbpp <- cbpp[order(cbpp$herd), ]
cbpp$herd <- as.integer(cbpp$herd)
write.csv(cbpp, file.path(out, "cbpp_data.csv"), row.names = FALSE, quote = FALSE)
for (cs in c("independence", "exchangeable")) {
  m <- geeglm(cbind(incidence, size - incidence) ~ period, id = herd, data = cbpp,
              family = binomial, corstr = cs)
  add_gee(paste0("cbpp_", cs), m)
}
# simulated attendance: 40 patients x 6 sessions, 4 scheduled per session (equal trials)
set.seed(7)
np <- 40; ns <- 6
patient <- rep(seq_len(np), each = ns)
u <- rep(rnorm(np, 0, 0.6), each = ns)
alliance <- rnorm(np * ns); age <- rep(rnorm(np, 50, 12), each = ns)
eta <- 0.3 + 0.4 * alliance + 0.01 * (age - 50) + 0.02 * alliance * (age - 50) + u
scheduled <- rep(4L, np * ns)
attended <- rbinom(np * ns, scheduled, plogis(eta))
sim <- data.frame(patient = patient, alliance = alliance, age = age,
                  scheduled = scheduled, attended = attended)
write.csv(data.frame(patient = patient, alliance = fmt(alliance), age = fmt(age),
                     scheduled = scheduled, attended = attended),
          file.path(out, "gee_sim_data.csv"), row.names = FALSE, quote = FALSE)
for (cs in c("independence", "exchangeable")) {
  m <- geeglm(cbind(attended, scheduled - attended) ~ alliance * age, id = patient,
              data = sim, family = binomial, corstr = cs)
  add_gee(paste0("sim_", cs), m)
}
# binary outcome (no trials) and a gaussian outcome, exchangeable within patient
sim$any_missed <- as.integer(sim$attended < sim$scheduled)
add_gee("sim_binary_exchangeable",
        geeglm(any_missed ~ alliance, id = patient, data = sim, family = binomial,
               corstr = "exchangeable"))
add_gee("sim_gaussian_exchangeable",
        geeglm(attended ~ alliance * age, id = patient, data = sim, family = gaussian,
               corstr = "exchangeable"))
write.csv(do.call(rbind, gee_rows), file.path(out, "gee_reference.csv"), row.names = FALSE)
cat("wrote reference CSVs\n")
