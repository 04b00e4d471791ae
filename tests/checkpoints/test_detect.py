from pathlib import Path

import pytest

from launcher.checkpoints import detect
from launcher.errors import LauncherError
from launcher.spec import CheckpointFormat
from tests.checkpoints.formats import FORMATS


@pytest.mark.parametrize("case", FORMATS)
def test_detects_each_format_from_contents(case: str, tmp_path: Path) -> None:
    expected, write = FORMATS[case]
    path = write(tmp_path)
    renamed = path.rename(path.with_name("no-telling-suffix"))  # contents decide, not the name
    assert detect(renamed) == CheckpointFormat(expected)


def test_missing_path_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match=r"model\.checkpoint: '.*nope' does not exist"):
        detect(tmp_path / "nope")


def test_unknown_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(LauncherError, match="cannot tell what"):
        detect(tmp_path)


def test_tar_without_a_known_layout(tmp_path: Path) -> None:
    import tarfile

    (tmp_path / "a.txt").write_text("x")
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        tar.add(tmp_path / "a.txt", arcname="a.txt")
    with pytest.raises(LauncherError, match=r"a tar without model_config\.yaml"):
        detect(tmp_path / "x.tar")
