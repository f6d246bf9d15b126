"""The `.imgrag/` folder: finding it, its manifest, its writer lock, and crash-safe writes.

Every file in it is either append-only JSONL (one fsynced line per record; a torn
last line is ignored on read and cut off before the next append) or written whole
to a temporary file and renamed over the old one, so a crash at any moment leaves
something readable.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgrag.errors import UsageError
from imgrag.store.files import json_bytes, storage_errors, write_atomic
from imgrag.store.paths import DIR_NAME, StorePaths

FORMAT_VERSION = 1


class IndexBusy(UsageError):
    """Another describe/embed holds the writer lock (exit 2, as any usage error): a caller
    that can wait (imgrag watch) tells it from other errors and tries again later."""


@dataclass(frozen=True)
class Workspace:
    """One `.imgrag/` folder. Photo paths inside are relative to `base`, its parent."""

    root: Path

    @property
    def base(self) -> Path:
        return self.root.parent

    @property
    def paths(self) -> StorePaths:
        return StorePaths(self.root)

    @classmethod
    def for_photos(cls, photos: Path, index: Path | None = None) -> Workspace:
        """The workspace that `describe`/`embed PHOTOS` write: `--index`, else the nearest
        index in a parent folder that already covers PHOTOS (one of its photo folders holds
        it, as git finds `.git`), else a new one beside PHOTOS (PHOTOS/../.imgrag)."""
        resolved = photos.resolve()
        if DIR_NAME in resolved.parts:
            # Photos kept in our own state folder would index themselves (and nest a new .imgrag/).
            raise UsageError(f"{photos} is inside an {DIR_NAME}/ folder, which holds imgrag's own files: "
                             "keep photos outside it")
        if index is not None:
            return cls(_as_workspace_dir(index))
        if not resolved.exists():
            raise UsageError(f"no such folder: {resolved}")
        folder = resolved if resolved.is_dir() else resolved.parent
        return cls.covering(folder) or cls.beside(folder)

    @classmethod
    def beside(cls, folder: Path) -> Workspace:
        """A workspace of `folder`'s own, next to it (`--new-index`): FOLDER/../.imgrag."""
        folder = folder.resolve()
        return cls(folder.parent / DIR_NAME)

    @classmethod
    def covering(cls, folder: Path) -> Workspace | None:
        """The nearest existing workspace, in `folder` or a parent, one of whose photo
        folders is `folder` or holds it: indexing a subfolder of an indexed folder uses that
        index, instead of making a second one that hides it and describes its photos again."""
        for parent in (folder, *folder.parents):
            candidate = parent / DIR_NAME
            if candidate.is_dir():
                ws = cls(candidate)
                try:
                    if ws.covers(folder):
                        return ws
                except UsageError:  # a manifest this imgrag cannot read: not ours to take over
                    continue
        return None

    def covers(self, folder: Path) -> bool:
        """Whether `folder` is one of this workspace's photo folders or inside one."""
        folder = folder.resolve()
        return any(folder == root or root in folder.parents for root in (r.resolve() for r in self.roots()))

    @classmethod
    def find(cls, start: Path, index: Path | None = None) -> Workspace:
        """The workspace a search reads: `--index`/IMGRAG_INDEX, else `.imgrag/` in start or a parent."""
        if index is not None:
            ws = cls(_as_workspace_dir(index))
            if not ws.root.is_dir():
                # --index naming a photo folder whose index lives higher up (`index PHOTOS`
                # puts it beside PHOTOS, or uses an enclosing one): say where it is.
                holder = cls.covering(ws.root.parent) if ws.root.parent.is_dir() else None
                if holder is not None:
                    raise UsageError(f"no index at {ws.root}: the photos in {ws.root.parent} are indexed in "
                                     f"{holder.root} (--index {holder.root.parent})")
                raise UsageError(f"no index at {ws.root}: run `imgrag index PHOTOS` first")
            return ws
        start = start.resolve()
        for folder in (start, *start.parents):
            candidate = folder / DIR_NAME
            if candidate.is_dir():
                return cls(candidate)
        raise UsageError(
            f"no {DIR_NAME}/ folder in {start} or its parents: run `imgrag index PHOTOS` "
            "first, or point at one with --index DIR"
        )

    # -- paths ----------------------------------------------------------------------

    def relative(self, path: Path) -> str:
        """How a photo path is stored: relative to `base`, so the whole tree can move."""
        full = os.path.abspath(path)
        # A photo under base (nearly always): cut the prefix. os.path.relpath gives the same
        # string but re-normalises base for every call, which a scan of 100k photos felt.
        if full.startswith(self._base_prefix):
            return full[len(self._base_prefix):]
        try:
            return os.path.relpath(full, self.base)
        except ValueError:  # another drive on Windows
            return full

    @functools.cached_property
    def _base_prefix(self) -> str:
        return os.path.join(os.path.abspath(self.base), "")

    def absolute(self, stored: str) -> Path:
        return self.base / stored

    # -- manifest -------------------------------------------------------------------

    def read_manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads(self.paths.manifest.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise UsageError(f"{self.paths.manifest} is not valid JSON ({e}); delete it to start over") from e
        fmt = manifest.get("format", FORMAT_VERSION)
        if isinstance(fmt, int) and fmt > FORMAT_VERSION:
            raise UsageError(
                f"{self.root} was written by a newer imgrag (format {fmt}, this one reads {FORMAT_VERSION}): upgrade imgrag"
            )
        return manifest

    def update_manifest(self, **changes: Any) -> dict[str, Any]:
        manifest = self.read_manifest()
        manifest.update(changes)
        manifest["format"] = FORMAT_VERSION
        write_atomic(self.paths.manifest, json_bytes(manifest, indent=2) + b"\n")
        return manifest

    def add_root(self, photos: Path) -> None:
        """Remember a photo folder (not one inside a folder already remembered: it would be scanned twice)."""
        roots = list(self.read_manifest().get("roots", []))
        rel = self.relative(photos.resolve())
        if rel not in roots and not self.covers(photos):
            self.update_manifest(roots=sorted([*roots, rel]))

    def roots(self) -> list[Path]:
        return [self.absolute(r) for r in self.read_manifest().get("roots", [])]

    # -- the writer lock ------------------------------------------------------------

    @contextmanager
    def writer_lock(self, wait: bool = False) -> Iterator[None]:
        """Held by describe/embed: a second writer is told the index is busy (or waits)."""
        from filelock import FileLock, Timeout

        lock_path = self.paths.writer_lock
        lock = FileLock(str(lock_path))
        try:
            with storage_errors(lock_path):
                self.root.mkdir(parents=True, exist_ok=True)
                lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            raise IndexBusy(
                f"{self.root} is busy: another imgrag describe/embed is writing it "
                "(run again later, or pass --wait)"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def writer_busy(self) -> bool:
        """Whether another describe/embed holds the writer lock right now (not waiting for it)."""
        from filelock import FileLock, Timeout

        if not self.paths.writer_lock.exists():
            return False
        lock = FileLock(str(self.paths.writer_lock))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        except OSError:  # a read-only workspace: nobody can be writing it either
            return False
        lock.release()
        return False

    def command(self, verb: str, *flags: str) -> str | None:
        """The exact `imgrag embed|index` for this workspace's photos, for hints: the photo
        folder (with --index when that folder alone would find another workspace); `embed`
        of several folders names the workspace only; None for `index` of several or none."""
        import shlex

        roots = self.roots()
        if len(roots) == 1:
            where = [str(roots[0])] + ([] if roots[0].parent == self.base else ["--index", str(self.root)])
        elif verb == "embed":
            where = ["--index", str(self.root)]
        else:
            return None
        return shlex.join(["imgrag", verb, *flags, *where])

    def embed_command(self, *flags: str) -> str:
        """`imgrag embed FLAGS ...` that (re)builds this index (see `command`)."""
        return self.command("embed", *flags) or ""


def _as_workspace_dir(index: Path) -> Path:
    """`--index` may name the `.imgrag/` folder itself or the folder that holds it."""
    index = index.expanduser().resolve()
    return index if index.name == DIR_NAME or (index / "manifest.json").exists() else index / DIR_NAME
