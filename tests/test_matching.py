"""include/exclude globs, gitignore-style rules and the start-up scan walker, on real folders."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestd.config.patterns import PathFilter, gitignore_match
from ingestd.config.schema import DEFAULT_EXCLUDE, DEFAULT_INCLUDE
from ingestd.intake.walk import iter_files

INCLUDE = ["*.mp4", "*.mov", "*.mkv"]
EXCLUDE = ["*.part", "*.tmp", ".*", "~*"]
NOBODY = "65534"


@pytest.fixture
def path_filter() -> PathFilter:
    return PathFilter(INCLUDE, EXCLUDE)


def touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def walk(
    root: Path, path_filter: PathFilter, *, recursive: bool, follow_symlinks: bool
) -> set[str]:
    """The walker's output as POSIX paths relative to root, asserting no duplicates."""
    paths = iter_files(root, path_filter, recursive=recursive, follow_symlinks=follow_symlinks)
    found = [path.relative_to(root).as_posix() for path in paths]
    assert len(found) == len(set(found)), found
    return set(found)


# --- PathFilter ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "wanted"),
    [
        ("clip.mp4", True),
        ("CLIP.MP4", True),
        ("Clip.Mov", True),
        ("clip.mkv", True),
        ("clip.avi", False),
        ("clip.mp4.part", False),
        ("clip.MP4.PART", False),
        (".clip.mp4", False),
        ("~clip.mp4", False),
        ("clip.TMP", False),
        ("clip.mp4x", False),
    ],
)
def test_wants_file_is_case_insensitive(path_filter: PathFilter, name: str, wanted: bool) -> None:
    assert path_filter.wants_file(name) is wanted


def test_wants_dir_uses_exclude_only(path_filter: PathFilter) -> None:
    assert path_filter.wants_dir("room-3")
    assert path_filter.wants_dir("videos.mp4")  # include is about files, not folders
    assert not path_filter.wants_dir(".trash")
    assert not path_filter.wants_dir("~old")
    assert not path_filter.wants_dir("X.TMP")


def test_wants_path_checks_every_folder(path_filter: PathFilter) -> None:
    assert path_filter.wants_path(PurePath("room-3/2024/CLIP.MP4"))
    assert path_filter.wants_path(PurePath("clip.mov"))
    assert not path_filter.wants_path(PurePath("room-3/.trash/clip.mp4"))
    assert not path_filter.wants_path(PurePath(".hidden/clip.mp4"))
    assert not path_filter.wants_path(PurePath("room-3/clip.mp4.part"))
    assert not path_filter.wants_path(PurePath("room-3/notes.txt"))
    assert not path_filter.wants_path(PurePath())


def test_empty_lists() -> None:
    nothing = PathFilter([], [])
    assert not nothing.wants_file("clip.mp4")
    assert nothing.wants_dir(".trash")
    everything = PathFilter(["*"], [])
    assert everything.wants_file(".clip.mp4.part")


_GLOBS = ["*.mp4", "*.MKV", "*.ts", "*", ".*", "~*", "*.part", "clip*", "Thumbs.db", "*.tar.gz",
          "*~", "a*b", "*.[mM]4v", "clip?.ts", "*.vidéo", "*.\u212akv", "*.\u017fx"]  # fmt: skip
_NAMES = st.text(alphabet="abcdefkmpstvxyACDKMPSTV.~_-0124 \u212a\u017f\u0130\xe9", max_size=12)


@settings(max_examples=300, deadline=None, database=None)
@given(
    include=st.lists(st.sampled_from(_GLOBS), max_size=4),
    exclude=st.lists(st.sampled_from(_GLOBS), max_size=4),
    names=st.lists(_NAMES, max_size=20),
)
def test_wants_file_says_what_the_globs_say(
    include: list[str], exclude: list[str], names: list[str]
) -> None:
    """The plain string tests a scan runs on each of a million names decide as the globs
    (fnmatch, case-insensitive) do, for any names, ASCII or not."""
    path_filter = PathFilter(include, exclude)
    for name in [*names, "CLIP.MP4", ".x.mp4", "clip.mp4.part", "thumbs.DB", "a.TAR.GZ", "a.SX"]:
        globbed = any(fnmatch.fnmatch(name.lower(), g.lower()) for g in include) and not any(
            fnmatch.fnmatch(name.lower(), g.lower()) for g in exclude
        )
        regex = path_filter._include.match(name) is not None
        regex = regex and path_filter._exclude.match(name) is None
        assert path_filter.wants_file(name) is regex, (name, include, exclude)
        if name.isascii() and all(g.isascii() for g in include + exclude):
            assert regex is globbed, (name, include, exclude)


_TRICKY = ["clip.mp4", "CLIP.MP4", "clip.Ts", ".clip.mp4", "~clip.mkv", "clip.mp4.part",
           "clip.part.mp4", "clip", "clip.", ".", "..mp4", "a.tar.gz", "b.TAR.GZ", "x~",
           "Thumbs.db", "thumbs.DB", "café.mkv", "\u212a.mkv", "clip.\u212akv", "TMPx.ts",
           "tmpx.ts", "clip.webm", "clip.crdownload"]  # fmt: skip


@pytest.mark.parametrize(
    ("include", "exclude"),
    [
        (list(DEFAULT_INCLUDE), list(DEFAULT_EXCLUDE)),
        (["*.mp4", "*.ts"], [".*", "tmp*"]),  # a prefix with letters: case matters
        (["*.mkv", "*"], ["*.part"]),
        (["*.tar.gz", "*.mp4"], ["*~", "Thumbs.db"]),
        (["*.[mM]kv", "clip*"], []),
    ],
)
def test_the_walker_wants_what_wants_file_wants(
    tmp_path: Path, include: list[str], exclude: list[str]
) -> None:
    """The walker judges most names inline (an extension looked up in a set): it takes
    exactly the files :meth:`PathFilter.wants_file` takes."""
    path_filter = PathFilter(include, exclude)
    for name in _TRICKY:
        if name not in (".",):
            touch(tmp_path / name)
    found = {Path(p).name for p in iter_files(tmp_path, path_filter, recursive=False,
                                              follow_symlinks=False)}  # fmt: skip
    assert found == {n for n in _TRICKY if n != "." and path_filter.wants_file(n)}


# --- gitignore_match ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "relpath", "matches"),
    [
        # ** at the end: everything below the folder, not the folder itself.
        ("room-3/**", "room-3/a.mp4", True),
        ("room-3/**", "room-3/2024/05/a.mp4", True),
        ("room-3/**", "room-3", False),
        ("room-3/**", "room-30/a.mp4", False),
        ("room-3/**", "x/room-3/a.mp4", False),  # has a slash: anchored at the root
        # ** at the start: any depth, top level included.
        ("**/*.mp4", "a.mp4", True),
        ("**/*.mp4", "x/y/a.MP4", True),
        ("**/*.mp4", "x/y/a.mov", False),
        # ** in the middle: zero or more folders.
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "a/x/y/b/c.mp4", True),  # matching a folder matches what is in it
        ("a/**/b", "a/xb", False),
        ("a/**/b", "ca/x/b", False),
        # No slash: the name at any depth; * never crosses a slash.
        ("*.mp4", "a.mp4", True),
        ("*.mp4", "room-3/2024/a.mp4", True),
        ("*.mp4", "room-3/a.mov", False),
        ("room-*", "room-3/a.mp4", True),
        ("room-*", "x/room-3/a.mp4", True),
        ("a*b", "a/b", False),
        ("a/*.mp4", "a/x/y.mp4", False),
        ("a/*.mp4", "a/y.mp4", True),
        # A leading slash anchors to the root.
        ("/x", "x", True),
        ("/x", "x/a.mp4", True),
        ("/x", "y/x", False),
        ("/x", "y/x/a.mp4", False),
        ("x", "y/x", True),
        # ? is one character, never a slash.
        ("clip-?.mp4", "clip-1.mp4", True),
        ("clip-?.mp4", "clip-12.mp4", False),
        ("a?b", "a/b", False),
        # A trailing slash matches folders only.
        ("room-3/", "room-3/a.mp4", True),
        ("room-3/", "x/room-3/a.mp4", True),
        ("room-3/", "room-3", False),
        ("room-3/", "room-3.mp4", False),
        # Classes, case, escapes and characters that mean something to regexes.
        ("clip-[0-9].mp4", "CLIP-7.MP4", True),
        ("clip-[!0-9].mp4", "clip-x.mp4", True),
        ("clip-[!0-9].mp4", "clip-7.mp4", False),
        ("a[!x]b", "a/b", False),
        ("ROOM 3 (old)/*.mp4", "room 3 (old)/a.mp4", True),
        ("a+b.mp4", "a+b.mp4", True),
        ("a+b.mp4", "aab.mp4", False),
        (r"\*.mp4", "*.mp4", True),
        (r"\*.mp4", "a.mp4", False),
        ("[x", "[x", True),
        ("**", "anything/at/all.mp4", True),
        # A "]" first in a class is one of its characters, negated or not (as in fnmatch).
        ("clip-[!]x].mp4", "clip-a.mp4", True),
        ("clip-[!]x].mp4", "clip-].mp4", False),
        ("clip-[]x].mp4", "clip-].mp4", True),
        # What gitignore reads specially at a pattern's edges is literal here: rules pick
        # the first match and do not negate, and a YAML string has no comments.
        ("!x", "!x", True),
        ("!x", "x", False),
        ("#x", "#x", True),
        ("x ", "x ", True),
        ("x ", "x", False),
        (" x", " x", True),
        (" x", "x", False),
        ("a\\", "a\\", True),
        ("a//b", "a/b", True),
    ],
)
def test_gitignore_match(pattern: str, relpath: str, matches: bool) -> None:
    assert gitignore_match(pattern, relpath) is matches


@pytest.mark.parametrize(
    ("pattern", "relpath"),
    [
        ("room-3/**", "ROOM-3/Clip.MP4"),
        ("Room-3/", "room-3/a.mp4"),
        ("/EXPORT/*.mov", "export/a.MOV"),
        ("clip-[a-c].mp4", "CLIP-B.MP4"),
        ("clip-[!A-C].mp4", "clip-D.mp4"),
        ("été/**", "ÉTÉ/a.mp4"),
    ],
)
def test_gitignore_match_ignores_case(pattern: str, relpath: str) -> None:
    """Unlike git, and like include/exclude: capture PCs write CLIP.MP4 as readily as clip.mp4."""
    assert gitignore_match(pattern, relpath)


@pytest.mark.parametrize("pattern", ["", "/", "//", "clip-[z-a].mp4"])
def test_gitignore_bad_patterns_raise_value_error(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        gitignore_match(pattern, "a.mp4")


# --- iter_files ---------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    touch(root / "top.mp4")
    touch(root / "TOP2.MOV")
    touch(root / "notes.txt")
    touch(root / "top.mp4.part")
    touch(root / "room-3" / "a.mp4")
    touch(root / "room-3" / "2024" / "b.mkv")
    touch(root / ".trash" / "deleted.mp4")
    touch(root / "room-3" / "~tmp" / "c.mp4")
    (root / "folder.mp4").mkdir()  # a folder whose name looks like a video
    touch(root / "folder.mp4" / "inner.mp4")
    os.mkfifo(root / "pipe.mp4")
    return root


def test_iter_files_recursive_prunes_excluded_folders(tree: Path, path_filter: PathFilter) -> None:
    found = walk(tree, path_filter, recursive=True, follow_symlinks=False)
    assert found == {
        "top.mp4",
        "TOP2.MOV",
        "room-3/a.mp4",
        "room-3/2024/b.mkv",
        "folder.mp4/inner.mp4",
    }


def test_iter_files_not_recursive(tree: Path, path_filter: PathFilter) -> None:
    found = walk(tree, path_filter, recursive=False, follow_symlinks=False)
    # Neither the folder called folder.mp4 nor the fifo is a file.
    assert found == {"top.mp4", "TOP2.MOV"}


@pytest.mark.parametrize("follow_symlinks", [False, True])
def test_iter_files_missing_root_is_reported(
    tmp_path: Path, path_filter: PathFilter, follow_symlinks: bool
) -> None:
    errors: list[tuple[Path, OSError]] = []
    missing = tmp_path / "missing"
    found = iter_files(
        missing,
        path_filter,
        recursive=True,
        follow_symlinks=follow_symlinks,
        on_error=lambda path, err: errors.append((path, err)),
    )
    assert list(found) == []
    assert [(path, type(err)) for path, err in errors] == [(missing, FileNotFoundError)]
    # Without a callback it is skipped quietly.
    assert list(iter_files(missing, path_filter, recursive=True, follow_symlinks=False)) == []


def test_iter_files_root_that_is_a_file(tmp_path: Path, path_filter: PathFilter) -> None:
    errors: list[Path] = []
    root = touch(tmp_path / "clip.mp4")
    found = iter_files(
        root,
        path_filter,
        recursive=True,
        follow_symlinks=False,
        on_error=lambda path, err: errors.append(path),
    )
    assert list(found) == []
    assert errors == [root]


def test_symlinks_skipped_unless_followed(tmp_path: Path, path_filter: PathFilter) -> None:
    root = tmp_path / "export"
    outside = tmp_path / "elsewhere"
    touch(outside / "linked.mp4")
    touch(outside / "sub" / "deep.mp4")
    touch(root / "real.mp4")
    (root / "file-link.mp4").symlink_to(outside / "linked.mp4")
    (root / "dir-link").symlink_to(outside / "sub", target_is_directory=True)
    (root / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (root / "folder-link.mp4").symlink_to(outside / "sub", target_is_directory=True)
    (root / ".hidden-link").symlink_to(outside / "sub", target_is_directory=True)

    assert walk(root, path_filter, recursive=True, follow_symlinks=False) == {"real.mp4"}
    found = walk(root, path_filter, recursive=True, follow_symlinks=True)
    # dir-link and folder-link.mp4 (a folder, not a file) lead to one folder: it is read once.
    assert found - {"dir-link/deep.mp4", "folder-link.mp4/deep.mp4"} == {
        "real.mp4",
        "file-link.mp4",
    }
    assert len(found) == 3


def test_symlink_loop_terminates(tmp_path: Path, path_filter: PathFilter) -> None:
    root = tmp_path / "export"
    touch(root / "a" / "clip.mp4")
    touch(root / "b" / "other.mp4")
    (root / "a" / "up").symlink_to(root, target_is_directory=True)
    (root / "a" / "self").symlink_to(root / "a", target_is_directory=True)
    (root / "b" / "to-a").symlink_to(root / "a", target_is_directory=True)
    (root / "x").symlink_to(root / "y", target_is_directory=True)
    (root / "y").symlink_to(root / "x", target_is_directory=True)  # a loop of two links

    found = walk(root, path_filter, recursive=True, follow_symlinks=True)
    # The real paths win over paths through links.
    assert found == {"a/clip.mp4", "b/other.mp4"}


def test_symlink_to_folder_outside_root_with_a_link_back(
    tmp_path: Path, path_filter: PathFilter
) -> None:
    root = tmp_path / "export"
    outside = tmp_path / "outside"
    touch(root / "a.mp4")
    touch(outside / "b.mp4")
    (root / "out").symlink_to(outside, target_is_directory=True)
    (outside / "back").symlink_to(root, target_is_directory=True)
    found = walk(root, path_filter, recursive=True, follow_symlinks=True)
    assert found == {"a.mp4", "out/b.mp4"}


def test_many_files(tmp_path: Path, path_filter: PathFilter) -> None:
    root = tmp_path / "export"
    for folder in range(20):
        sub = root / f"f{folder}"
        sub.mkdir(parents=True)
        for index in range(250):
            (sub / f"c{index}.mp4").touch()
    assert len(walk(root, path_filter, recursive=True, follow_symlinks=False)) == 5000


# --- permissions: root ignores them, so the walker runs as nobody in a child process ------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder uid 65534 can reach (pytest's tmp_path lives under a root-only folder)."""
    folder = Path(tempfile.mkdtemp(prefix="ingestd-test-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def run_unprivileged(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run python ``code`` as uid/gid 65534 (or as ourselves if we are not root)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv is not None, "setpriv (util-linux) is needed to drop privileges"
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run(
        [*prefix, sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        check=False,
    )


WALK_AS_NOBODY = """
import json, os, sys
from pathlib import Path
from ingestd.config.patterns import PathFilter
from ingestd.intake.walk import iter_files
root = Path(sys.argv[1])
errors = []
found = iter_files(
    root, PathFilter(["*.mp4"], []), recursive=True, follow_symlinks=sys.argv[2] == "1",
    on_error=lambda path, err: errors.append([str(path), type(err).__name__]),
)
files = sorted(str(p.relative_to(root)) for p in found)
print(json.dumps({"uid": os.geteuid(), "files": files, "errors": errors}))
"""


@pytest.mark.parametrize("follow", ["0", "1"])
def test_unreadable_folder_is_skipped(shared_dir: Path, follow: str) -> None:
    root = shared_dir / "export"
    touch(root / "open" / "a.mp4")
    touch(root / "locked" / "secret.mp4")
    touch(root / "locked" / "inner" / "deeper.mp4")
    touch(root / "z.mp4")
    for path in [root, root / "open", *root.glob("**/*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (root / "locked").chmod(0o700)

    result = run_unprivileged(WALK_AS_NOBODY, str(root), follow)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["uid"] != 0
    assert answer["files"] == ["open/a.mp4", "z.mp4"]
    assert answer["errors"] == [[str(root / "locked"), "PermissionError"]]
