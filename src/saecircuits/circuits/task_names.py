"""The names of the circuit tasks: the one list the task registry (``tasks.BUILDERS``), the circuit
config, the command line and the report derive from. Free of torch, so the command line can list
the tasks without loading the model stack."""

TASKS = ("ioi", "induction", "greater_than", "list_recall", "colored_objects")
SPLIT_TASKS = ("ioi", "greater_than", "induction")  # the tasks with held-out splits (``splits.SPLIT_BUILDERS``)


def task_key(name: str) -> str:
    """A task name as ``TASKS`` spells it (``Greater-Than`` -> ``greater_than``); unknown names stay unknown."""
    return name.replace("-", "_").lower()


def split_task(name: str) -> str:
    """``name`` as a task with held-out splits, or ValueError saying which tasks have them."""
    key = task_key(name)
    if key not in SPLIT_TASKS:
        raise ValueError(f"task '{name}' has no held-out train / val / test splits; choose one of: {', '.join(SPLIT_TASKS)}")
    return key
