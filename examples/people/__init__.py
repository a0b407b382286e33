"""The people app: the original notes' ``User`` with ``get_user`` and ``insert_user``, and users' orders."""

from examples.people.app import SAMPLE_DATA, Order, User, get_user, get_user_orders, insert_order, insert_user

__all__ = ["SAMPLE_DATA", "Order", "User", "get_user", "get_user_orders", "insert_order", "insert_user"]
