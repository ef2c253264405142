"""A ranked-list builder shared by the data tests."""

from dpokit.data import RankedList


def item(scores, responses=None, **kw):
    """A RankedList with placeholder responses " r0", " r1", ... unless given."""
    responses = responses or [f" r{i}" for i in range(len(scores))]
    return RankedList("Q:", responses, list(scores), location="d.jsonl:1", **kw)
