"""The kubespeed operator: turns an LMTrainingJob into a gang of training pods and keeps it running.

Three rooms, imported one way (build and decide need only the core `kubespeed`;
run uses both):

    build/    spec -> the Kubernetes objects a job owns; `kubespeed render` prints them
    decide/   what was observed -> the job's status, Events and actions; no I/O, no clock of its own
    run/      the operator process: API access, the pod informer, the work queue, the reconcile loop

`render_command` is `kubespeed render`: the builders on the command line, with no cluster and no kopf.
"""
