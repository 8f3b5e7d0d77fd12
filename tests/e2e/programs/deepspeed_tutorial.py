"""A DeepSpeed program as DeepSpeed's getting-started tutorial writes one, with nothing of kubespeed.

    deepspeed --hostfile H --no_ssh --node_rank R --master_addr A --master_port P deepspeed_tutorial.py --deepspeed_config ds.json
    torchrun --nnodes 2 --nproc-per-node 2 ... deepspeed_tutorial.py --deepspeed_config ds.json

`deepspeed.add_config_arguments`, `init_distributed`, `initialize`, and checkpoints with
`save_checkpoint`/`load_checkpoint` in the folder KUBESPEED_CHECKPOINT_DIR names (DeepSpeed's
`latest` tag says which to resume). What a program author adds for kubespeed, all optional:
- progress with loss: one JSON line per step appended to KUBESPEED_PROGRESS_FILE by rank 0;
- SIGTERM: set a flag, agree on it across ranks at the step boundary, save, exit 0.

For the tests, rank 0 also appends each step to `<checkpoint dir>/steps.jsonl` (with the
attempt and the step it resumed from), where the test reads what happened.
"""

import argparse
import importlib.util
import json
import os
import signal
import time

import deepspeed
import torch

parser = argparse.ArgumentParser(description="A tiny regression, trained with DeepSpeed")
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--save-interval", type=int, default=10)
parser.add_argument("--step-seconds", type=float, default=0.0, help="sleep per step, so tests can act mid-run")
parser.add_argument("--local_rank", type=int, default=-1, help="passed by DeepSpeed's launcher")
parser = deepspeed.add_config_arguments(parser)
args = parser.parse_args()

deepspeed.init_distributed(dist_backend="gloo")
rank = torch.distributed.get_rank()
torch.manual_seed(1234)
model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
engine, _, _, _ = deepspeed.initialize(args=args, model=model, model_parameters=model.parameters())

checkpoints = os.environ["KUBESPEED_CHECKPOINT_DIR"]
_, client_state = engine.load_checkpoint(checkpoints)
start = client_state["step"] if client_state else 0

stop = torch.zeros(1)
signal.signal(signal.SIGTERM, lambda signum, frame: stop.fill_(1))


def report(**values):
    """The documented call for progress: rank 0 appends a JSON line to KUBESPEED_PROGRESS_FILE."""
    path = os.environ.get("KUBESPEED_PROGRESS_FILE")
    if path and rank == 0:
        with open(path, "a") as handle:
            handle.write(json.dumps(values) + "\n")


weights = torch.arange(16, dtype=torch.float32) / 16
for step in range(start + 1, args.steps + 1):
    generator = torch.Generator().manual_seed(step * 1000 + rank)
    x = torch.randn(engine.train_micro_batch_size_per_gpu(), 16, generator=generator)
    loss = torch.nn.functional.mse_loss(engine(x).squeeze(-1), x @ weights)
    engine.backward(loss)
    engine.step()
    report(step=step, loss=loss.item(), totalSteps=args.steps)
    if rank == 0:
        with open(os.path.join(checkpoints, "steps.jsonl"), "a") as handle:
            handle.write(json.dumps({"step": step, "loss": loss.item(), "attempt": os.environ.get("KUBESPEED_ATTEMPT"),
                                     "resumedFrom": start, "pid": os.getpid(),
                                     "kubespeedImportable": importlib.util.find_spec("kubespeed") is not None}) + "\n")  # fmt: skip
    # Every rank must agree to stop at the same step, or the collective save would wait for the others forever.
    stopping = stop.clone()
    torch.distributed.all_reduce(stopping, op=torch.distributed.ReduceOp.MAX)
    if step % args.save_interval == 0 or step == args.steps or stopping.item():
        engine.save_checkpoint(checkpoints, client_state={"step": step})
    if stopping.item():
        break
    time.sleep(args.step_seconds)
