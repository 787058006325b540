"""The model registry: RecBole built-ins, own models and entry-point models."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from recbole_ext import registry


def test_builtins_resolve_case_insensitively():
    spec = registry.get("fpmc")
    assert spec.name == "FPMC" and spec.source == "recbole" and spec.family == "sequential"
    assert registry.get("Pop").family == "traditional"
    assert registry.get("BPR").family == "general"


def test_unknown_model_suggests_the_closest_name():
    with pytest.raises(registry.UnknownModelError, match="did you mean SASRec"):
        registry.get("SASRek")


def test_listing_contains_builtins_with_their_class_names():
    names = registry.model_names()
    assert {"SASRec", "GRU4Rec", "NGCF", "BERT4Rec", "Pop", "MultiVAE"} <= set(names)


def test_own_models_are_discovered():
    own = [s for s in registry.all_models() if s.source == "recbole_ext"]
    for spec in own:
        assert spec.cls.__module__.startswith("recbole_ext.models.")
        assert registry.get(spec.name.lower()) == spec


def test_entry_point_model_is_registered(tmp_path, monkeypatch):
    package = tmp_path / "my_rec_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text(
        textwrap.dedent(
            """
            from recbole.model.general_recommender import Pop

            class MyPop(Pop):
                '''A researcher's own model, declared through an entry point.'''
            """
        )
    )
    dist = tmp_path / "my_rec_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-rec-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[{registry.ENTRY_POINT_GROUP}]\nMyPop = my_rec_pkg.model:MyPop\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    registry._entry_point_models.cache_clear()
    try:
        spec = registry.get("mypop")
        assert spec.name == "MyPop" and spec.source == "entry-point:my-rec-pkg"
        assert spec.family == "traditional"
        assert "MyPop" in registry.model_names()
    finally:
        registry._entry_point_models.cache_clear()
        sys.modules.pop("my_rec_pkg.model", None)
        sys.modules.pop("my_rec_pkg", None)
