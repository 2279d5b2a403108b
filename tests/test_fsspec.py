"""mirrorfs behind fsspec: fsspec's own abstract test suite for implementations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.tests.abstract import AbstractFixtures
from fsspec.tests.abstract.copy import AbstractCopyTests
from fsspec.tests.abstract.get import AbstractGetTests
from fsspec.tests.abstract.open import AbstractOpenTests
from fsspec.tests.abstract.pipe import AbstractPipeTests
from fsspec.tests.abstract.put import AbstractPutTests

from mirrorfs import Volume
from mirrorfs.fsspec import MirrorFileSystem


@pytest.fixture(scope="module")
def mirror_fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MirrorFileSystem]:
    d = tmp_path_factory.mktemp("fsspec")
    vol = Volume.create([str(d / "p0.img"), str(d / "p1.img")], 128 << 20,
                        volume_file=d / "v.toml", cp_interval=None)
    fs = MirrorFileSystem(vol, skip_instance_cache=True)
    yield fs
    vol.close()


class MirrorFixtures(AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, mirror_fs: MirrorFileSystem) -> MirrorFileSystem:
        return mirror_fs

    @pytest.fixture
    def fs_path(self) -> str:
        return "/work"

    @pytest.fixture
    def supports_empty_directories(self) -> bool:
        return True


class TestCopy(AbstractCopyTests, MirrorFixtures):  # type: ignore[misc]
    pass


class TestGet(AbstractGetTests, MirrorFixtures):  # type: ignore[misc]
    pass


class TestPut(AbstractPutTests, MirrorFixtures):  # type: ignore[misc]
    pass


class TestOpen(AbstractOpenTests, MirrorFixtures):  # type: ignore[misc]
    pass


class TestPipe(AbstractPipeTests, MirrorFixtures):  # type: ignore[misc]
    pass


def test_protocol_is_registered(tmp_path: Path) -> None:
    """``fsspec.filesystem("mirrorfs", volume=...)`` opens a volume file by the entry point."""
    vol = Volume.create([str(tmp_path / "p0.img")], 64 << 20, volume_file=tmp_path / "v.toml",
                        cp_interval=None)
    vol.close()
    fs: Any = fsspec.filesystem("mirrorfs", volume=str(tmp_path / "v.toml"),
                                skip_instance_cache=True)
    try:
        fs.pipe_file("mirrorfs:///a/b.txt", b"hello")
        assert fs.cat_file("/a/b.txt") == b"hello"
        assert fs.ls("/a", detail=False) == ["/a/b.txt"]
        with pytest.raises(FileNotFoundError):
            fs.cat_file("/nope")
    finally:
        fs.close()
    with Volume.open(tmp_path / "v.toml", read_only=True, cp_interval=None) as v:
        assert v.read_bytes("/a/b.txt") == b"hello"
