"""The kubespeed operator: turns an LMTrainingJob into a gang of training pods and keeps it running.

The objects it owns come from plain builders (`children.job_children`,
`children.attempt_pods`) that need no cluster and no kopf; `kubespeed render`
prints what they return, so what a user previews is what the operator creates.
"""
