"""Distributed plumbing shared by every launcher: who am I (env), and when to stop for a requeue (preempt)."""
from gpt_ds.dist.env import DistEnv, detect_env, export_env
from gpt_ds.dist.preempt import REQUEUE_EXIT_CODE, PreemptionHandler

__all__ = ["DistEnv", "detect_env", "export_env", "PreemptionHandler", "REQUEUE_EXIT_CODE"]
