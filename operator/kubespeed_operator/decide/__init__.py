"""The decisions: what was observed of a job (its status, its pods' `PodView`s, the clock) -> what to do.

Pure functions: `lifecycle.decide` returns the status to write, the Events to
post and the pods to create or delete; the running part applies it.
"""
