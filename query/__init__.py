"""Endpoints, the query engine over sorted indexes, and the merge of shard results."""

from query.endpoints import mutation, query
from query.planner import Page, Range
from query.views import ReadView, WriteView

__all__ = ["Page", "Range", "ReadView", "WriteView", "mutation", "query"]
