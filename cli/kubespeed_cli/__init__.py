"""The `kubespeed` command: the front that users run, on top of the core, the operator and the trainer.

    main.py     the command table; each command's module is imported only when it runs
    local/      `kubespeed local`: a job on this machine, each pod a local process group
    dev/        `kubespeed dev`: a real local control plane from pinned Go modules
    render.py   `kubespeed render`: the operator's builders on the command line
    crd.py      `kubespeed crd`: the CRD the core generates
"""
