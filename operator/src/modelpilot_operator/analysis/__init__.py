"""Metric queries (PromQL templates) and the statistical verdicts drawn from them."""
