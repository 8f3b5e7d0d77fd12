"""The `kubespeed` command: one entry point, each subcommand owned by the package it belongs to.

Subcommands are imported only when run, so the operator image (no torch) and the
trainer image (no kopf) each carry only what their own commands need.

    kubespeed local manifests/examples/quickstart.yaml   # a job on this machine
    kubespeed render job.yaml                            # the objects the operator would create
    kubespeed operator --all-namespaces                  # run the operator
    kubespeed train config.yaml                          # one rank group, for people and tests
    kubespeed launch                                     # the pod entrypoint
    kubespeed dev cluster                                # a real local control plane
"""

from __future__ import annotations

import importlib
import sys

from kubespeed import __version__

# name -> (module, one-line summary); each module has `main(argv: list[str]) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "local": ("kubespeed_cli.local", "run an LMTrainingJob on this machine, each pod a local process group"),
    "render": ("kubespeed_cli.render", "print the objects the operator would create for a job, as YAML"),
    "crd": ("kubespeed_cli.crd", "print the LMTrainingJob CustomResourceDefinition"),
    "operator": ("kubespeed_operator.run.main", "run the operator"),
    "launch": ("kubespeed_trainer.commands.launch", "pod entrypoint: start this node's ranks from the pod wiring"),
    "train": ("kubespeed_trainer.commands.train", "train one rank group from a trainer config file"),
    "prepare": ("kubespeed_trainer.commands.prepare", "tokenize a data source once into token shards"),
    "sample": ("kubespeed_trainer.commands.sample", "generate text from a checkpoint or exported weights"),
    "export": ("kubespeed_trainer.commands.export", "export a checkpoint's weights as safetensors"),
    "dev": ("kubespeed_cli.dev.command", "developer tools: `kubespeed dev cluster` starts a local control plane"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: kubespeed <command> [args]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"kubespeed: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
