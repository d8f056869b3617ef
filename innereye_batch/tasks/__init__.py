"""What a model does with one work item, per task: decode its inputs, predict on the device, return a Prediction.

``base.py`` holds the task-independent contract (WorkItem, Prediction, Predictor, Task); one module per task
implements it (``segmentation.py``, ``classification.py``). The pipeline and the writers only speak the contract;
``task_for`` finds a model's task by name.
"""

from __future__ import annotations

import importlib

from innereye_batch.tasks.base import Task

_TASK_MODULES = {"segmentation": "segmentation", "classification": "classification"}


def task_for(name: str) -> Task:
    """The task named ``name`` (a model package's ``task``)."""
    if name not in _TASK_MODULES:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(_TASK_MODULES)}")
    task: Task = importlib.import_module(f"innereye_batch.tasks.{_TASK_MODULES[name]}").TASK
    return task
