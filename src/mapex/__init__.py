"""mapex: task-driven CNN pruning."""

__version__ = "0.1.0"
