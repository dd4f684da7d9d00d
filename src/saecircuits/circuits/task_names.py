"""The names of the circuit tasks: the one list the task registry (``tasks.BUILDERS``), the circuit
config, the command line and the report derive from. Free of torch, so the command line can list
the tasks without loading the model stack."""

TASKS = ("ioi", "induction", "greater_than", "list_recall", "colored_objects")


def task_key(name: str) -> str:
    """A task name as ``TASKS`` spells it (``Greater-Than`` -> ``greater_than``); unknown names stay unknown."""
    return name.replace("-", "_").lower()
