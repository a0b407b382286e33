"""Version 2 of the people app: ``User`` drops ``address`` and gains ``email``.

Upgrade a running cluster from ``examples.people``: stop the replicas (each
writes a snapshot), start them with ``--app examples.people_v2``, then
``docraft accept-code --app examples.people_v2`` and
``docraft migrate --app examples.people_v2 --to 2``.
"""

from examples.people_v2.app import Order, User, get_user, get_user_orders, insert_order, insert_user

__all__ = ["Order", "User", "get_user", "get_user_orders", "insert_order", "insert_user"]
