"""The running operator: reads the cluster, asks `decide` what to do, and does it with `build`'s objects.

`main` starts it; `handlers` is all that kopf sees.
"""
