"""The builders: an LMTrainingJob (and its parsed spec) -> the objects it owns, as plain dicts.

Pure functions that need no cluster and no kopf; the operator creates exactly
what `children.job_children` and `children.attempt_pods` return.
"""
