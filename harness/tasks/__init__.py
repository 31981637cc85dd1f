"""Tasks: where a task's data lives, how to read it, and how it is scored. Tasks know nothing of methods."""

from harness.tasks.data import DataError, TaskData, find_data_dir, load_task

__all__ = ["DataError", "TaskData", "find_data_dir", "load_task"]
