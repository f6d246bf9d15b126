"""Which folders `imgrag watch` polls: those on network filesystems, found in a mounts table
written as Linux writes /proc/mounts (spaces as \\040, the deepest mount point wins)."""

from __future__ import annotations

from pathlib import Path

from imgrag.watch.filesystems import filesystem_type, is_network

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
nas:/export/photos /mnt/nas nfs4 rw,relatime 0 0
//server/share /mnt/nas/smb\\040share cifs rw 0 0
sshfs#me@host: /home/me/remote fuse.sshfs rw 0 0
tmpfs /mnt/nas/local tmpfs rw 0 0
"""


def test_the_deepest_mount_point_holding_the_folder_names_its_filesystem(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    assert filesystem_type(Path("/mnt/nas/2024/summer"), mounts) == "nfs4"
    assert filesystem_type(Path("/mnt/nas/smb share/x"), mounts) == "cifs"
    assert filesystem_type(Path("/mnt/nas/local/x"), mounts) == "tmpfs"
    assert filesystem_type(Path("/mnt/nasty"), mounts) == "ext4"  # a prefix of a name is not a parent
    assert filesystem_type(Path("/home/me/remote/pics"), mounts) == "fuse.sshfs"


def test_network_filesystems_are_polled_local_ones_are_not(tmp_path):
    assert all(is_network(t) for t in ("nfs", "nfs4", "cifs", "smb3", "fuse.sshfs", "9p", "NFS"))
    assert not any(is_network(t) for t in ("ext4", "btrfs", "apfs", "tmpfs", "fuseblk", None))
    assert filesystem_type(tmp_path, tmp_path / "no-such-mounts-file") is None  # not Linux: no table
