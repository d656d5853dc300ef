"""Output paths: the one check that a path can be written, and the one rule for replacing what is there.

Every command that writes (the train stages, bench, generate's --output) goes through these, so the
rules read the same everywhere and a mistake is one line naming the flag and the path.

Writable: a folder is created (with its parents) if need be, and a file must be creatable in it;
a file's folder likewise. An existing file is proved writable without changing it.

Replacing — what `--overwrite` (and a command that always rewrites its own report files) may do:
  * a file output may replace a *regular file* at its path, and nothing else: never a folder, a
    device (`/dev/full`), a FIFO or a socket, and never a symbolic link (neither the link nor what
    it points to);
  * a folder output replaces only the entries that the command itself writes, by name — a model's
    config.json and model.safetensors, a run's checkpoints/ and log.jsonl, … — each only when it
    is of the kind the command writes (a regular file, or a folder with the command's own layout,
    such as checkpoints/ holding only step-* folders). Every other entry of the folder stays as it
    is. A symbolic link, a device or a foreign folder under one of those names is refused, before
    anything is changed.
Replacements are atomic: the new content is written under a temporary name in the same folder and
renamed over the old one, so a killed or failed write leaves the old file (or none), never half of one.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import OrthrusError



class WriteFailed(OrthrusError):
    """An output that the system refused to write while a command ran (a full disk, a quota, an I/O error): a fault of
    the environment rather than a mistake in the command line. An OrthrusError, so the command lines print it as one
    `error:` line; `run_main` may give it its own exit status."""


# --------------------------------------------------------------------------- describing a path and an I/O error


def kind_of(path: Path) -> str | None:
    """What sits at `path` (a symbolic link is not followed), in words; None when nothing does."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there (or a file where a folder should be)
        return None
    except OSError:
        return "an unreadable entry"
    for test, words in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                        (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "a special file"


def is_regular_file(path: Path) -> bool:
    """True for a regular file that is not a symbolic link."""
    return kind_of(path) == "a regular file"


def is_real_folder(path: Path) -> bool:
    """True for a folder that is not a symbolic link to one."""
    return kind_of(path) == "a folder"


def io_reason(e: BaseException) -> str:
    """Why a write or read failed, in a few words: the OSError's text, found also behind torch's, safetensors' and
    tokenizers' wrappers ("No space left on device", "Read-only file system", …)."""
    seen = set()
    link: BaseException | None = e
    while link is not None and id(link) not in seen:  # torch raises its own error with the OSError as the context
        seen.add(id(link))
        if isinstance(link, OSError) and link.errno is not None:
            return link.strerror or os.strerror(link.errno)
        link = link.__cause__ or link.__context__
    text = str(e)
    code = re.search(r"os error (\d+)|code: (\d+)", text)  # Rust's io::Error, as safetensors and tokenizers print it
    if code:
        return os.strerror(int(code.group(1) or code.group(2)))
    if "unexpected pos" in text or "file write failed" in text:  # torch's writer, when a write fell short
        return "a write fell short (is the disk full?)"
    return (text.strip().splitlines() or [type(e).__name__])[0]


# --------------------------------------------------------------------------- the writable-path check


def _probe(folder: Path) -> None:
    """Creates and removes an anonymous file in `folder` (OSError if that is not possible)."""
    with tempfile.TemporaryFile(dir=folder):
        pass


def cannot_write_in(folder: Path) -> str | None:
    """Why no file can be written in `folder` (created, with its parents, if need be), or None if one can."""
    folder = Path(folder)
    for existing in (folder, *folder.parents):
        if os.path.lexists(existing):
            if not existing.is_dir():
                kind = kind_of(existing)
                return f"{existing} is {'a file' if kind == 'a regular file' else kind}, not a folder"
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _probe(folder)
    except OSError as e:
        return f"cannot write there ({e.strerror or type(e).__name__})"
    return None


def check_writable_folder(path: Path, flag: str) -> None:
    """Creates the folder `path` if needed and proves a file can be written in it; OrthrusError naming `flag` if not."""
    path = Path(path)
    problem = cannot_write_in(path)
    if problem:
        raise OrthrusError(f"{flag} {path}: {problem}")


def check_writable_file(path: Path, flag: str) -> None:
    """Proves the file `path` can be written (its folder created if need be) without changing anything there.

    An existing entry must be a regular file (which the command may then replace): never a folder, a device, a FIFO
    or a symbolic link. Whether an existing file may be replaced at all (--overwrite) is the caller's rule.
    """
    path = Path(path)
    kind = kind_of(path)
    if kind == "a folder":
        problem = "is a folder; give a file name"
    elif kind is not None and kind != "a regular file":
        problem = f"is {kind}, not a regular file; give the path of a file to write"
    else:
        problem = cannot_write_in(path.parent if str(path.parent) else Path("."))
    if problem is None and kind is not None:
        try:
            with open(path, "a"):  # appending nothing: the file stays as it is
                pass
        except OSError as e:
            problem = f"cannot write there ({e.strerror or type(e).__name__})"
    if problem:
        raise OrthrusError(f"{flag} {path}: {problem}")


# --------------------------------------------------------------------------- the replace rule


def check_replaceable(folder: Path, flag: str, outputs: dict[str, Callable[[Path], str | None] | None]) -> None:
    """Refuses (one line) unless every entry of `folder` that the command would replace is its own kind of entry.

    `outputs` maps each name the command writes in `folder` to None (a regular file) or to a check of a folder
    (`own_layout`: the reason it is not the command's, or None). Other entries of the folder are not looked at.
    """
    folder = Path(folder)
    for name, check in outputs.items():
        path = folder / name
        kind = kind_of(path)
        if kind is None or (check is None and kind == "a regular file"):
            continue
        problem = f"is {kind}" if check is None or kind != "a folder" else check(path)
        if problem:
            what = "a file" if check is None else "a folder"
            raise OrthrusError(f"{flag} {folder}: {name} {problem}, not {what} this command wrote, so it is not replaced: "
                               "move it away or give another folder")


def own_layout(allowed: Callable[[str], bool]) -> Callable[[Path], str | None]:
    """A check for `check_replaceable`: a folder whose entries are all real folders or regular files with allowed names."""

    def check(folder: Path) -> str | None:
        for entry in sorted(os.listdir(folder)):
            if not allowed(entry) or kind_of(folder / entry) not in ("a folder", "a regular file"):
                return f"holds {entry}"
        return None

    return check


def remove_output(path: Path) -> None:
    """Removes an entry that `check_replaceable` allowed: a regular file, or a real folder (whose links are removed, never
    followed). Anything else is refused."""
    import shutil

    kind = kind_of(path)
    if kind is None:
        return
    if kind == "a regular file":
        path.unlink()
    elif kind == "a folder":
        shutil.rmtree(path)
    else:
        raise OrthrusError(f"{path}: is {kind}; not removed")


def _new_file_mode() -> int:
    """The permissions that open() gives a new file: 0666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: Path, write: Callable[[object], None], flag: str | None = None) -> None:
    """Writes a file through `write(binary file object)` under a temporary name beside `path`, then renames it over
    `path` — which may only be absent or a regular file. A failure (a full disk) leaves `path` as it was and raises a
    one-line OrthrusError."""
    path = Path(path)
    where = f"{flag} {path}" if flag else str(path)
    kind = kind_of(path)
    if kind not in (None, "a regular file"):
        raise OrthrusError(f"{where}: is {kind}, not a regular file; not replaced")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(fd, _new_file_mode())  # mkstemp's 0600 -> what open() would have given
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OrthrusError:
        raise
    except Exception as e:  # OSError, or a writer's wrapper of one
        raise WriteFailed(f"{where}: cannot write ({io_reason(e)})") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def write_text_atomically(path: Path, text: str, flag: str | None = None) -> None:
    """`write_atomically` for a UTF-8 text."""
    data = text.encode("utf-8")
    write_atomically(path, lambda f: f.write(data), flag)


def listing(names: Iterable[str], most: int = 4) -> str:
    """'a, b, c, d, …' for messages."""
    names = list(names)
    return ", ".join(names[:most]) + (", …" if len(names) > most else "")


__all__ = ["WriteFailed", "kind_of", "is_regular_file", "is_real_folder", "io_reason", "cannot_write_in", "check_writable_folder",
           "check_writable_file", "check_replaceable", "own_layout", "remove_output", "write_atomically",
           "write_text_atomically", "listing"]
