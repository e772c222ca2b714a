"""Step 6: the CI gate independent of pytest: session, preflight checks, cache, baseline,
thresholds, verdicts and output files.
"""
