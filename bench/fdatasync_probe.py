"""The cost of one fdatasync after a 256-byte write, for the kinds of file a journal can be:
growing, sparse of a fixed size (what fjall does with each journal), zero-filled, or
posix_fallocate'd. Writes in DIR, which should be on the disk the store uses.

    python3 bench/fdatasync_probe.py DIR
"""
import os, time, sys
d = sys.argv[1]
def run(name, prep, n=3000):
    p = os.path.join(d, name)
    fd = os.open(p, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    prep(fd)
    os.fsync(fd)
    buf = b"x" * 256
    t = time.perf_counter()
    for i in range(n):
        os.write(fd, buf)
        os.fdatasync(fd)
    el = time.perf_counter() - t
    os.close(fd); os.unlink(p)
    print(f"{name:40s} {n/el:8.0f} fdatasync/s  {el/n*1e6:6.0f} us each")
run("append (file grows)", lambda fd: None)
run("sparse set_len 64 MiB (fjall's journal)", lambda fd: os.ftruncate(fd, 64 << 20))
def zero(fd):
    z = b"\0" * (1 << 20)
    for _ in range(64): os.write(fd, z)
    os.lseek(fd, 0, os.SEEK_SET)
run("zero-filled 64 MiB, overwritten", zero)
def falloc(fd):
    os.posix_fallocate(fd, 0, 64 << 20)
run("posix_fallocate 64 MiB (unwritten extents)", falloc)
