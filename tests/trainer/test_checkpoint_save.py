"""`checkpoint.save` over two real DeepSpeed ranks on gloo, with a peer that dies at the worst moment."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Rank 1 leaves right after its part of DeepSpeed's save: rank 0 gets past DeepSpeed's
# barrier, completes the checkpoint, then waits in the closing barrier for a peer that is gone.
RANK = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from kubespeed_trainer.engine import device
    device.select_accelerator(False)
    import deepspeed, torch
    from kubespeed_trainer.engine import accelerator, checkpoint

    accelerator.init_distributed(False)
    model = torch.nn.Linear(4, 4)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                           config={"train_batch_size": 2})
    if os.environ["RANK"] == "1":
        save = engine.save_checkpoint
        def save_then_die(*args, **kwargs):
            save(*args, **kwargs)
            os._exit(9)
        engine.save_checkpoint = save_then_die
    out = Path(sys.argv[1])
    checkpoint.save(engine, out, 5, {"step": 5}, keep=2, data_parallel_size=1,
                    on_complete=lambda tag: (out / "reported").write_text(tag))
""")


def test_a_peer_dying_in_the_closing_barrier_does_not_hide_a_complete_checkpoint(tmp_path: Path, unused_port: int) -> None:
    from kubespeed import checkpoints

    port = str(unused_port)
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", RANK, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True))
    try:
        assert procs[1].wait(timeout=240) == 9, procs[1].communicate()[0][-3000:]
        # Rank 0 may fail or hang in the closing barrier; what matters is what it did before it.
        try:
            procs[0].wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()

    tag = checkpoints.tag_for(5)
    assert checkpoints.latest_complete(tmp_path) == tag
    assert (tmp_path / "reported").read_text() == tag, procs[0].communicate()[0][-3000:]
