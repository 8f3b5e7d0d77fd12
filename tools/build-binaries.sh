#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd and helm from the
# pins in tools/controlplane/go.mod and tools/helm/go.mod into the per-machine cache
# (${KUBESPEED_CACHE:-~/.cache/kubespeed}/controlplane/<key>/bin) and print that folder.
# A second run with the same pins prints the folder at once. Needs `go` and python3.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
[[ -x "$repo/.venv/bin/python" ]] && python="${PYTHON:-$repo/.venv/bin/python}"
cd "$repo" && exec "$python" -m kubespeed_cli.dev.build "$@"
