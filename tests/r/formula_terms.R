# Reference term lists for tests/test_formula_terms.py: how R's terms() expands the fixed
# part of a formula (lme4::nobars() removes the random part first, as lme4 does).
#
# Run from the repository root:   Rscript tests/r/formula_terms.R
# Written with: R 4.2.2 (stats::terms), lme4 1.1-31 (nobars).
# Output (committed): tests/r/formula_terms.csv with formula, terms (labels in R's order,
# joined by "|"), intercept (0/1) and offset (the offset() variables, joined by "|").
suppressPackageStartupMessages(library(lme4))
formulas <- c(
  "y ~ (a + b) * (c + d)",
  "y ~ (alliance_w + alliance_b) * (age_c + autonomy_c) + (1 | therapist/patient)",
  "y ~ (a + b + c)^2",
  "y ~ (a + b + c)^3 - a:b:c",
  "y ~ a * b * c - a:b",
  "y ~ a * b * c * d - a:b:c:d",
  "y ~ a/b",
  "y ~ (a + b)/c",
  "y ~ a/(b + c)",
  "y ~ (a * b)/c",
  "y ~ a %in% b",
  "y ~ a %in% (b + c)",
  "y ~ a + b %in% a",
  "y ~ b:a + a",
  "y ~ a:b:c + a + c:a",
  "y ~ a + b + a:b + b:a",
  "y ~ 0 + a * b",
  "y ~ a * b - 1",
  "y ~ -1 + a",
  "y ~ a * b + 0 + 1",
  "y ~ 1",
  "y ~ a - a",
  "y ~ -a + b",
  "y ~ a * b - (a + b)",
  "y ~ a:(b + c)",
  "y ~ a * (b + c * d)",
  "y ~ ((a + b) * c) + d",
  "y ~ a + (b + (c + d):a)",
  "y ~ (a + b)^2 + c - b",
  "y ~ a^2",
  "y ~ a + I(a^2) + log(b + 5)",
  "y ~ poly(a, 2) * b",
  "y ~ a * b + offset(log(c))",
  "y ~ offset(w) + a - 1",
  "y ~ a * b + (a || g)",
  "y ~ (a + b) * c + (1 + a | g) + (1 | h)"
)
fmt_terms <- function(f) {
  tt <- terms(nobars(as.formula(f)))
  off <- attr(tt, "offset")
  vars <- as.character(attr(tt, "variables"))[-1]
  data.frame(formula = f,
             terms = paste(attr(tt, "term.labels"), collapse = "|"),
             intercept = attr(tt, "intercept"),
             offset = if (is.null(off)) "" else paste(vars[off], collapse = "|"))
}
out <- do.call(rbind, lapply(formulas, fmt_terms))
write.csv(out, "tests/r/formula_terms.csv", row.names = FALSE)
cat("wrote tests/r/formula_terms.csv\n")
