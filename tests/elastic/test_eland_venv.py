"""The Eland venv's build reuses this environment's torch (hard links) when it meets the pin."""

from __future__ import annotations

import importlib.metadata
import os

from elastic.conftest import link_distribution


def test_a_distribution_that_meets_the_pin_is_linked_whole_and_counts_as_installed(tmp_path):
    own = importlib.metadata.distribution("packaging")
    assert link_distribution(f"packaging=={own.version}", tmp_path)
    linked = next(importlib.metadata.distributions(name="packaging", path=[str(tmp_path)]))
    assert linked.version == own.version  # what pip reads to call the requirement satisfied
    files = [f for f in own.files or () if f.parts[0] != ".."]
    assert files and all((tmp_path / f).is_file() for f in files)
    mine, theirs = os.stat(tmp_path / "packaging" / "__init__.py"), os.stat(own.locate_file("packaging/__init__.py"))
    if mine.st_dev == theirs.st_dev:
        assert mine.st_ino == theirs.st_ino  # linked, not copied (a copy only across file systems)


def test_nothing_is_linked_when_the_version_misses_the_pin_or_the_package_is_absent(tmp_path):
    assert not link_distribution("packaging<1", tmp_path)
    assert not link_distribution("no-such-distribution==1.0", tmp_path)
    assert not any(tmp_path.iterdir())
