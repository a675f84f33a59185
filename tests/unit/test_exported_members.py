"""The public surface: exactly what ``__all__`` promises, and each name resolves."""

from __future__ import annotations

import importlib
import inspect

import pytest

import medmesh

PACKAGES = [
    "medmesh",
    "medmesh.crypto",
    "medmesh.identity",
    "medmesh.storage.backends",
    "medmesh.testing",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_resolve(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} needs a docstring"
    for member in module.__all__:
        assert getattr(module, member) is not None


def test_top_level_surface_is_curated() -> None:
    for name in medmesh.__all__:
        getattr(medmesh, name)  # load the lazy ones
    public = {
        n
        for n in dir(medmesh)
        if not n.startswith("_") and not inspect.ismodule(getattr(medmesh, n))
    } - {"annotations", "TYPE_CHECKING", "Any"}
    assert public == set(medmesh.__all__) - {"__version__"}


def test_unknown_attribute_raises() -> None:
    with pytest.raises(AttributeError):
        _ = medmesh.no_such_thing  # type: ignore[attr-defined]
