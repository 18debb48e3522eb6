"""Evaluation of every model of the chain: metrics (pure measurements), evaluate (the stage's work),
report (metrics JSON, plots data, markdown summary, PNG)."""
