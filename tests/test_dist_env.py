"""detect_env against fake environments: what SLURM, torchrun and a plain shell set, and the disagreements we refuse."""
import os

import pytest

from gpt_ds.dist.env import (DEFAULT_PORT, DistEnv, detect_env, expand_nodelist, export_env, slurm_port)
from gpt_ds.errors import GptDsError


def slurm(**over):
    """What `srun` sets in task 3 of a 2-node x 2-task step (node2, second task)."""
    env = {
        "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4",
        # host names that resolve everywhere; real node names are covered by the expand_nodelist test
        "SLURM_JOB_NODELIST": "localhost,127.0.0.1", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
        "SLURM_TASKS_PER_NODE": "2(x2)",
    }
    env.update(over)
    return {k: v for k, v in env.items() if v is not None}


def test_single_process_when_nothing_is_set():
    env = detect_env({})
    assert env == DistEnv(0, 1, 0, 1, 0, 1, "127.0.0.1", DEFAULT_PORT, "single")
    assert env.is_main and not env.distributed


def test_slurm_task_reads_rank_local_rank_node_and_port_from_job_id():
    env = detect_env(slurm())
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 4, 1, 2)
    assert (env.node_rank, env.num_nodes, env.launcher) == (1, 2, "slurm")
    assert env.master_addr == "localhost"  # the first host of the node list
    assert env.master_port == slurm_port(4242) != slurm_port(4243)
    assert 1024 < env.master_port < 65536


def test_slurm_uneven_tasks_per_node():
    env = detect_env(slurm(SLURM_STEP_TASKS_PER_NODE="3,1(x2)", SLURM_NODEID="2", SLURM_PROCID="4",
                           SLURM_LOCALID="0", SLURM_NTASKS="5", SLURM_STEP_NUM_TASKS="5",
                           SLURM_JOB_NODELIST="localhost,127.0.0.1,localhost"))
    assert (env.rank, env.world_size, env.local_world_size, env.node_rank, env.num_nodes) == (4, 5, 1, 2, 3)


def test_slurm_master_addr_and_port_from_environment_take_precedence():
    env = detect_env(slurm(MASTER_ADDR="127.0.0.1", MASTER_PORT="23456"))
    assert (env.master_addr, env.master_port) == ("127.0.0.1", 23456)


def test_batch_shell_without_srun_is_not_a_multi_rank_job():
    # The sbatch script itself has SLURM_PROCID=0 and SLURM_NTASKS=4 but is no task of a step: running the trainer
    # there directly must not wait forever for 3 ranks that never come.
    env = detect_env(slurm(SLURM_STEP_ID=None, SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0"))
    assert env.launcher == "single" and env.world_size == 1
    assert detect_env(slurm(SLURM_STEP_ID="batch", SLURM_PROCID="0")).launcher == "single"


def test_torchrun():
    env = detect_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                      "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29512", "TORCHELASTIC_RUN_ID": "x"})
    assert env == DistEnv(1, 2, 1, 2, 0, 1, "127.0.0.1", 29512, "torchrun")


def test_torchrun_inside_a_slurm_step_wins_over_slurm_task_ids():
    # one srun task per node running torchrun: SLURM_PROCID numbers the node tasks, RANK the trainer ranks
    env = detect_env(slurm(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2", GROUP_RANK="1",
                           MASTER_ADDR="localhost", MASTER_PORT="29500", TORCHELASTIC_RUN_ID="1",
                           SLURM_PROCID="1", SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2", SLURM_LOCALID="0"))
    assert (env.rank, env.world_size, env.node_rank, env.num_nodes, env.launcher) == (3, 4, 1, 2, "torchrun")


@pytest.mark.parametrize("over, words", [
    ({"RANK": "0"}, ["SLURM says RANK=3", "RANK=0", "node rank 1"]),
    ({"WORLD_SIZE": "8"}, ["WORLD_SIZE=4", "WORLD_SIZE=8"]),
    ({"SLURM_PROCID": "4"}, ["rank 4 is outside 0..3"]),
    ({"SLURM_LOCALID": "2"}, ["local rank 2 is outside 0..1"]),
    ({"SLURM_NODEID": "2"}, ["lists 2 node(s) but SLURM_NODEID=2"]),
    ({"SLURM_JOB_NODELIST": "no-such-host.invalid,localhost"}, ["no-such-host.invalid", "does not resolve"]),
    ({"MASTER_ADDR": "no-such-host.invalid"}, ["MASTER_ADDR 'no-such-host.invalid'", "does not resolve"]),
    ({"SLURM_NTASKS": "four", "SLURM_STEP_NUM_TASKS": None}, ["SLURM_NTASKS='four'"]),
    ({"SLURM_JOB_NODELIST": None}, ["SLURM_JOB_NODELIST is not"]),
])
def test_slurm_disagreements_are_refused_with_the_variable_named(over, words):
    with pytest.raises(GptDsError) as e:
        detect_env(slurm(**over))
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("env, words", [
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "localhost"},
     ["rank 2 is outside 0..1"]),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, ["MASTER_ADDR is not set"]),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "nohost.invalid"},
     ["does not resolve"]),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost"}, ["LOCAL_RANK is not set"]),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "localhost",
      "MASTER_PORT": "70000"}, ["MASTER_PORT 70000"]),
])
def test_torchrun_disagreements_are_refused(env, words):
    with pytest.raises(GptDsError) as e:
        detect_env(env)
    for w in words:
        assert w in str(e.value)


def test_expand_nodelist_matches_scontrol_show_hostnames():
    assert expand_nodelist("node[1-2]") == ["node1", "node2"]
    assert expand_nodelist("gpu[08-10,12],cpu-a,x[1]y") == ["gpu08", "gpu09", "gpu10", "gpu12", "cpu-a", "x1y"]
    with pytest.raises(GptDsError, match="cannot read the range"):
        expand_nodelist("node[5-2]")


def test_export_env_round_trips_through_detect_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "x")  # recorded first, so teardown removes what export_env sets (no leak into
        monkeypatch.delenv(k)       # later tests' subprocesses, e.g. an sbatch that inherits LOCAL_RANK)
    original = DistEnv(1, 4, 1, 2, 0, 2, "127.0.0.1", 23001, "slurm")
    export_env(original)
    assert os.environ["RANK"] == "1" and os.environ["MASTER_PORT"] == "23001"
    again = detect_env(dict(os.environ, TORCHELASTIC_RUN_ID="t"))
    assert (again.rank, again.world_size, again.local_rank, again.local_world_size, again.master_addr,
            again.master_port) == (1, 4, 1, 2, "127.0.0.1", 23001)


def test_arch_list_for_deepspeed_drops_arch_suffixes_only():
    from gpt_ds.dist.env import deepspeed_arch_list
    assert deepspeed_arch_list("9.0a") == "9.0"
    assert deepspeed_arch_list("8.0;9.0a 10.0f") == "8.0;9.0;10.0"
    assert deepspeed_arch_list("8.6+PTX;9.0") == "8.6+PTX;9.0"  # DeepSpeed reads +PTX itself


def test_gpu_binding_one_visible_gpu_per_task_or_one_per_local_rank():
    from gpt_ds.dist.env import cuda_device_for
    assert cuda_device_for(3, 1, 4) == 0  # --gpus-per-task=1: each task sees only its own GPU
    assert cuda_device_for(3, 4, 4) == 3 and cuda_device_for(1, 8, 4) == 1  # tasks share the node's GPUs
    with pytest.raises(GptDsError, match="local rank 3 of 4 sees 2 GPU"):
        cuda_device_for(3, 2, 4)


def test_rank0_decides_runs_on_rank_0_only_and_shares_its_error():
    import pytest

    from gpt_ds.dist.agree import rank0_decides
    from gpt_ds.errors import GptDsError
    calls = []
    assert rank0_decides(lambda: calls.append(0) or "step_0000006", rank=0, world_size=1) == "step_0000006"
    assert rank0_decides(lambda: calls.append(1), rank=1, world_size=1) is None and calls == [0]  # no group: no answer

    def broken():
        raise GptDsError("checkpoints: none usable")
    with pytest.raises(GptDsError, match="none usable") as err:
        rank0_decides(broken, rank=0, world_size=1)
    assert not err.value.quiet
    with pytest.raises(ZeroDivisionError):  # a bug is not turned into a user message on rank 0
        rank0_decides(lambda: 1 / 0, rank=0, world_size=1)
