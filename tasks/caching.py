"""The cache policy of gdflow's tasks: keys that survive restarts (see tasks.keys)."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from tasks import keys
from tasks.keys import stable_digest

__all__ = ["STABLE_INPUTS", "StableInputs", "stable_digest"]


class StableInputs(CachePolicy):
    """Key = task name + inputs (stably hashed) + version of the numeric code.

    Unlike Prefect's INPUTS, two different tasks with equal inputs never share a key, and
    unlike TASK_SOURCE, a change in a helper the task calls invalidates the key too.
    """

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        return stable_digest(task_ctx.task.name, inputs, keys.CODE_VERSION)


STABLE_INPUTS = StableInputs()
