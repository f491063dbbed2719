"""The task setups by name: ``tinymeta train --task NAME`` looks the task up here.

Adding a task family is one :class:`~tinymeta.runs.setup.TaskSetup` subclass and one entry
here, or, from outside the package, ``tinymeta.runs.register_task(MySetup)``.
"""

from __future__ import annotations

from .omniglot import OmniglotSetup
from .setup import TaskSetup
from .sinusoid import SinusoidSetup

TASKS: dict[str, type[TaskSetup]] = {
    "sinusoid": SinusoidSetup,
    "omniglot": OmniglotSetup,
}


def register_task(setup: type[TaskSetup]) -> type[TaskSetup]:
    """Add ``setup`` under ``setup.name`` (usable as a class decorator); returns it.

    Raises:
        ValueError: a setup of that name is already registered, or ``setup`` is no
            :class:`TaskSetup` subclass.
    """
    if not (isinstance(setup, type) and issubclass(setup, TaskSetup)):
        raise ValueError(f"register_task: {setup!r} is not a TaskSetup subclass")
    if setup.name in TASKS and TASKS[setup.name] is not setup:
        raise ValueError(f"register_task: a task named {setup.name!r} is already registered")
    TASKS[setup.name] = setup
    return setup
