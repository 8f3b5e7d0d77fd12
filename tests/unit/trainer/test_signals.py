"""StopRequest over a real two-rank gloo group: the ranks stop at the same step boundary."""

from __future__ import annotations

import multiprocessing
import os
import signal

from kubespeed.ports import free_port

BOUNDARIES = 6
SIGNALLED_AFTER = 2  # rank 1 alone gets SIGTERM after its second step boundary


def _rank(rank: int, port: int, results: multiprocessing.Queue) -> None:
    import torch.distributed as dist

    from kubespeed_trainer.engine.signals import StopRequest

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    stop = StopRequest().install().join()
    agreed = []
    for boundary in range(1, BOUNDARIES + 1):
        agreed.append(stop.agreed())
        if rank == 1 and boundary == SIGNALLED_AFTER:
            os.kill(os.getpid(), signal.SIGTERM)
    stop.settle()
    # Settled, it holds no group (one kept alive past destroy_process_group is torn down during
    # interpreter finalization, which aborts): it answers for this rank alone, with no collective.
    results.put((rank, agreed, stop.requested, stop.agreed()))
    dist.destroy_process_group()


def test_a_sigterm_on_one_rank_stops_every_rank_at_the_same_later_boundary():
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    ranks = [context.Process(target=_rank, args=(rank, port, results)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    outcome = {rank: rest for rank, *rest in (results.get(timeout=120) for _ in ranks)}
    for process in ranks:
        process.join(timeout=60)
        assert process.exitcode == 0
    # The flag set after boundary 2 is reduced at boundary 3 and read by everyone at boundary 4.
    expected = [False, False, False, True, True, True]
    assert outcome == {0: [expected, False, False], 1: [expected, True, True]}
