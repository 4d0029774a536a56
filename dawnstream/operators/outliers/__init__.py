"""MacroBase-style outlier detection and explanation (Bailis et al., SIGMOD 2017).

Classifiers (MAD, MCD, percentile, predicate) trained on an adaptable damped reservoir (ADR),
amortized maintenance counters (AMC) for decayed heavy hitters, and risk-ratio explanations
(minimal itemsets with support and ratio thresholds).
"""
