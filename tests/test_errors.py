"""The exception tree: written down where it is defined, and usable the ordinary ways."""

import contextlib
import importlib
from collections.abc import AsyncIterator
from typing import TypeVar

import pytest

from window_gate import errors
from window_gate.errors import GateError, GraphError, GraphFailure, GraphOutcomeUnknown

E = TypeVar("E", bound=Exception)


@contextlib.asynccontextmanager
async def holding() -> AsyncIterator[None]:
    yield


async def test_graph_error_raised_through_an_asynccontextmanager_stays_itself() -> None:
    """contextlib sets `__traceback__` on the exception it passes on (a frozen dataclass refused it)."""
    with pytest.raises(GraphError) as caught:
        async with holding():
            raise GraphError(400, 131047, "Re-engagement message", raw={"error": {"code": 131047}})
    assert (caught.value.code, caught.value.http_status) == (131047, 400)
    assert caught.value.raw == {"error": {"code": 131047}} and caught.value.__traceback__ is not None
    assert str(caught.value) == "(131047) Re-engagement message"


def _subclasses(kind: type[E]) -> set[type[E]]:
    return {sub for direct in kind.__subclasses__() for sub in {direct, *_subclasses(direct)}}


def test_every_exception_is_in_the_tree_of_the_errors_docstring() -> None:
    importlib.import_module("window_gate.app")  # every feature: their own GateErrors exist
    doc = errors.__doc__ or ""
    names = {k.__name__ for k in _subclasses(GateError)} | {k.__name__ for k in _subclasses(GraphFailure)}
    missing = sorted(name for name in names if f"── {name}" not in doc)
    assert not missing, f"errors.py's docstring does not show {missing}"
    for kind in _subclasses(GateError):
        assert f"{kind.__name__} ·" in doc and f"{kind.status} {kind.code}" in doc, kind


def test_an_answer_that_may_have_reached_meta_is_one_kind() -> None:
    """The send path settles both as `unknown`: never re-sent."""
    assert issubclass(errors.GraphNoAnswer, GraphOutcomeUnknown)
    assert issubclass(errors.GraphUnreadable, GraphOutcomeUnknown)
    assert not issubclass(errors.GraphUnreachable, GraphOutcomeUnknown)
