"""The test node agent: runs the pods bound to the control plane's fake GPU nodes (agent.py)."""

from .agent import NodeAgent

__all__ = ["NodeAgent"]
