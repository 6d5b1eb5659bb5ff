"""A FUSE passthrough mount: `MOUNT` shows `SOURCE` through a user-space file system without file locks or
shared mmap (`direct_io`), as a network drive's mount behaves. For checking that nothing exp3 keeps on a mirror
needs either (BENCHMARKS.md, "The mirror"). Root only; needs `apt-get install -y fuse libfuse2`, `pip install
mfusepy`. Runs in the foreground until unmounted (`fusermount -u MOUNT` or `umount MOUNT`).

    python benchmarks/fuse_passthrough.py SOURCE MOUNT
"""

from __future__ import annotations

import errno
import os
import sys

from mfusepy import FUSE, FuseOSError, Operations


class Passthrough(Operations):
    """Every call forwarded to the same path under `root`."""

    use_ns = True  # utimens gets nanoseconds

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def access(self, path, amode):
        if not os.access(self._full(path), amode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        return os.chmod(self._full(path), mode)

    def chown(self, path, uid, gid):
        return os.chown(self._full(path), uid, gid)

    def getattr(self, path, fh=None):
        st = os.lstat(self._full(path))
        times = {key: getattr(st, f"{key}_ns") for key in ("st_atime", "st_ctime", "st_mtime")}  # use_ns
        return {**times, **{key: getattr(st, key) for key in ("st_gid", "st_mode", "st_nlink", "st_size", "st_uid")}}

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._full(path))]

    def mkdir(self, path, mode):
        return os.mkdir(self._full(path), mode)

    def rmdir(self, path):
        return os.rmdir(self._full(path))

    def statfs(self, path):
        stv = os.statvfs(self._full(path))
        return {key: getattr(stv, key) for key in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                   "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    def unlink(self, path):
        return os.unlink(self._full(path))

    def rename(self, old, new):
        return os.rename(self._full(old), self._full(new))

    def utimens(self, path, times=None):
        return os.utime(self._full(path), ns=times) if times else os.utime(self._full(path))

    def open(self, path, flags):
        return os.open(self._full(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self._full(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        with open(self._full(path), "r+b") as handle:
            handle.truncate(length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return os.close(fh)

    def fsync(self, path, datasync, fh):
        return os.fsync(fh)


if __name__ == "__main__":
    source, mount = sys.argv[1], sys.argv[2]
    FUSE(Passthrough(source), mount, foreground=True, nothreads=False, direct_io=True)
