"""The people app: the original notes' ``User`` model with ``get_user`` and ``insert_user``."""

from examples.people.app import SAMPLE_DATA, User, get_user, insert_user

__all__ = ["SAMPLE_DATA", "User", "get_user", "insert_user"]
