"""Whether a folder lives on a network filesystem, where the system's change events
(inotify, FSEvents) do not report what other machines write: such folders are polled."""

from __future__ import annotations

import os
from pathlib import Path

# Filesystems whose changes made elsewhere (another machine, the VM's host) raise no local events.
NETWORK_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "virtiofs", "vboxsf", "ceph", "glusterfs",
    "lustre", "gpfs", "beegfs", "davfs", "fuse.sshfs", "fuse.rclone", "fuse.s3fs", "fuse.glusterfs",
    "fuse.vmhgfs-fuse", "fuse.davfs2", "fuse.gcsfuse", "fuse.juicefs", "fuse.cephfs",
})
MOUNTS = Path("/proc/mounts")


def filesystem_type(folder: Path, mounts: Path = MOUNTS) -> str | None:
    """The type of the filesystem holding `folder` (Linux: from /proc/mounts), else None."""
    try:
        lines = mounts.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:  # not Linux
        return None
    where = os.path.realpath(folder)
    best, kind = -1, None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = where == point or where.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:  # the deepest mount point holding the folder
            best, kind = len(point), parts[2]
    return kind


def is_network(fs_type: str | None) -> bool:
    return fs_type is not None and fs_type.lower() in NETWORK_TYPES
