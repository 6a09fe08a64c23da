"""PreemptionHandler: a real signal to one rank stops both gloo ranks at the same step boundary."""
import os
import signal
import socket

import pytest
import torch.multiprocessing as mp

from gpt_ds.dist.preempt import REQUEUE_EXIT_CODE, PreemptionHandler


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, signalled_rank, signal_step, signum, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    handler = PreemptionHandler()
    handler.install()
    stopped_at = None
    try:
        for step in range(1, 9):
            if rank == signalled_rank and step == signal_step:
                os.kill(os.getpid(), signum)  # a real signal, delivered to this process only
            if handler.should_stop():
                stopped_at = step
                assert handler.should_stop()  # sticky, and no second collective is needed
                break
        out.put((rank, stopped_at, handler.requested_locally(), handler.signal_name))
    finally:
        handler.uninstall()
        dist.destroy_process_group()


def _run(world, signalled_rank, signal_step, signum):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, signalled_rank, signal_step, signum, out))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return sorted(out.get(timeout=5) for _ in range(world))


@pytest.mark.parametrize("signalled_rank, signum", [(1, signal.SIGUSR1), (0, signal.SIGTERM)])
def test_signal_on_one_rank_stops_every_rank_at_the_same_step(signalled_rank, signum):
    results = _run(2, signalled_rank, 3, signum)
    assert [r[1] for r in results] == [3, 3]  # both ranks stop at step 3
    assert [r[2] for r in results] == [r == signalled_rank for r in range(2)]  # only one saw it
    assert results[signalled_rank][3] == signal.Signals(signum).name


def test_no_signal_never_stops():
    assert [r[1] for r in _run(2, -1, 0, signal.SIGUSR1)] == [None, None]


def test_without_a_process_group_the_local_flag_decides_and_uninstall_restores():
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionHandler() as handler:
        assert signal.getsignal(signal.SIGUSR1) != before
        assert not handler.should_stop()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert handler.requested_locally() and handler.should_stop()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_requeue_code_is_not_one_the_shell_or_timeout_use():
    assert REQUEUE_EXIT_CODE not in (0, 1, 2, 124, 125, 126, 127) and REQUEUE_EXIT_CODE < 128


def test_a_signal_blocked_by_the_parent_is_unblocked_and_still_seen():
    # a wrapper (a batch system, a sandbox, a supervisor) may start us with USR1 blocked; the mask survives exec
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    handler = PreemptionHandler()
    try:
        handler.install()
        assert signal.SIGUSR1 not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
        os.kill(os.getpid(), signal.SIGUSR1)
        assert handler.requested_locally() and handler.signal_name == "SIGUSR1"
    finally:
        handler.uninstall()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
