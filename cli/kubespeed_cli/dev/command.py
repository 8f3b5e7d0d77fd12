"""`kubespeed dev`: a real local control plane for people, the same one the tests use.

    kubespeed dev cluster                  # etcd, kube-apiserver, controller-manager, scheduler
    kubespeed dev cluster --gpu-nodes 2    # plus two fake GPU nodes (8 x nvidia.com/gpu each)
    kubespeed dev build                    # only build the binaries (printed: their folder)

`cluster` runs in the foreground and prints two lines to paste into another shell:

    export KUBECONFIG=/tmp/kubespeed-cp-.../admin.kubeconfig
    export PATH=~/.cache/kubespeed/controlplane/<key>/bin:$PATH     # kubectl, helm

Ctrl-C (or SIGTERM) stops every process it started and removes its temp folder.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from kubespeed_cli.dev import build
from kubespeed_cli.dev.cluster import ControlPlane, ControlPlaneError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubespeed dev", description="developer tools")
    commands = parser.add_subparsers(dest="command", required=True)
    cluster = commands.add_parser("cluster", help="run a local control plane in the foreground until Ctrl-C")
    cluster.add_argument("--gpu-nodes", type=int, default=0, metavar="N", help="register N fake GPU nodes")
    cluster.add_argument("--gpus-per-node", type=int, default=8, metavar="G", help="nvidia.com/gpu per fake node")
    commands.add_parser("build", help="build the pinned binaries into the cache and print their folder")
    return parser


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_cluster(gpu_nodes: int, gpus_per_node: int) -> int:
    # SIGINT too, explicitly: a shell that starts a command in the background (`&`, CI runners,
    # agents) starts it with SIGINT ignored, and Python then never raises KeyboardInterrupt.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    started = time.monotonic()
    try:
        with ControlPlane() as cp:
            names = cp.add_gpu_nodes(gpu_nodes, gpus_per_node) if gpu_nodes else []
            print(f"control plane ready in {time.monotonic() - started:.0f}s at {cp.server}"
                  + (f" with nodes {', '.join(names)}" if names else "")
                  + f"; logs in {cp.logs}. Ctrl-C stops it. In another shell:", file=sys.stderr)  # fmt: skip
            print(f"export KUBECONFIG={cp.kubeconfig}")
            print(f"export PATH={cp.bin_dir}:$PATH", flush=True)
            try:
                while all(process.running() for process in cp.processes):
                    time.sleep(1)
            except KeyboardInterrupt:
                # A second Ctrl-C must not cut the orderly stop short.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                print("stopping...", file=sys.stderr)
                return 0
            print(f"a component exited; stopping the rest.\n{cp.logs_tail()}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("interrupted while starting; stopped what had started", file=sys.stderr)
        return 130
    except (ControlPlaneError, build.BuildError) as error:
        print(f"kubespeed dev cluster: {error}", file=sys.stderr)
        return 1


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "build":
        return build.main([])
    return run_cluster(args.gpu_nodes, args.gpus_per_node)
