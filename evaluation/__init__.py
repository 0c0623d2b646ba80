"""Metrics, the oracle floor and the harness that scores counterfactual predictions."""
