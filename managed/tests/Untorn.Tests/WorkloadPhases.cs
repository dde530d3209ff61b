using System.Text;
using System.Text.RegularExpressions;

namespace Untorn.Tests;

// The workload's error probes and its two ENOSPC phases (blocks, then inodes).
public partial class WorkloadTests
{
    private sealed partial class Workload
    {
        private void AssertMissing(string path) =>
            Expect(Errno.ENOENT, () => _fs.Statx(AtFlags.Root, B(path), AtFlags.SymlinkNoFollow, StatxMask.BasicStats));

        private string? PickExisting()
        {
            var all = _m.Files.Keys.Take(50).Concat(_m.Symlinks.Keys).Concat(MovableDirs()).ToList();
            return PickFile() is { } f && _rng.Next(2) == 0 ? f : all.Count == 0 ? null : all[_rng.Next(all.Count)];
        }

        // The errno contract inside the workload, on whatever the tree holds now; nothing may change.
        private void Errors()
        {
            var file = PickFile();
            var dir = PickDir();
            switch (_rng.Next(7))
            {
                case 0 when PickExisting() is { } existing:
                    Expect(Errno.EEXIST, () => _fs.Open(B(existing), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, 0x1A4));
                    Expect(Errno.EEXIST, () => _fs.Mkdir(B(existing), 0x1ED));
                    Expect(Errno.EEXIST, () => _fs.Symlink(B("x"), B(existing)));
                    if (file != null) Expect(Errno.EEXIST, () => _fs.Link(B(file), B(existing)));
                    break;
                case 1:
                    var missing = NewName(dir);
                    Expect(Errno.ENOENT, () => _fs.Open(B(missing), OpenFlags.RdOnly, 0));
                    Expect(Errno.ENOENT, () => _fs.Unlink(B(missing)));
                    Expect(Errno.ENOENT, () => _fs.Rmdir(B(missing)));
                    Expect(Errno.ENOENT, () => _fs.Rename(B(missing), B(NewName(dir))));
                    Expect(Errno.ENOENT, () => _fs.Link(B(missing), B(NewName(dir))));
                    Expect(Errno.ENOENT, () => _fs.Open(B(missing + "/x"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4));
                    Expect(Errno.ENOENT, () => _fs.Mkdir(B(missing + "/x"), 0x1ED));
                    AssertMissing(missing);
                    break;
                case 2 when file != null:
                    Expect(Errno.ENOTDIR, () => _fs.Open(B(file + "/x"), OpenFlags.RdOnly, 0));
                    Expect(Errno.ENOTDIR, () => _fs.Open(B(file + "/x"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4));
                    Expect(Errno.ENOTDIR, () => _fs.Mkdir(B(file + "/x"), 0x1ED));
                    Expect(Errno.ENOTDIR, () => _fs.Rmdir(B(file)));
                    Expect(Errno.ENOTDIR, () => _fs.Open(B(file), OpenFlags.RdOnly | OpenFlags.Directory, 0));
                    if (MovableDirs().Where(d => !Under(file, d)).ToList() is { Count: > 0 } ds)
                        Expect(Errno.ENOTDIR, () => _fs.Rename(B(ds[_rng.Next(ds.Count)]), B(file)));
                    break;
                case 3 when dir != "/":
                    Expect(Errno.EISDIR, () => _fs.Unlink(B(dir)));
                    Expect(Errno.EISDIR, () => _fs.Open(B(dir), OpenFlags.RdWr, 0));
                    Expect(Errno.EISDIR, () => _fs.Open(B(dir), OpenFlags.WrOnly | OpenFlags.Creat, 0x1A4));
                    if (file != null && !Under(file, dir)) Expect(Errno.EISDIR, () => _fs.Rename(B(file), B(dir)));
                    break;
                case 4 when MovableDirs().Where(d => _m.Dirs[d].Count > 0).ToList() is { Count: > 0 } full:
                    var victim = full[_rng.Next(full.Count)];
                    Expect(Errno.ENOTEMPTY, () => _fs.Rmdir(B(victim)));
                    if (MovableDirs().Where(d => !Under(d, victim) && !Under(victim, d)).ToList() is { Count: > 0 } movers)
                        Expect(Errno.ENOTEMPTY, () => _fs.Rename(B(movers[_rng.Next(movers.Count)]), B(victim)));
                    break;
                case 5:
                    var tooLong = TreeModel.Join(dir, new string('n', 256));
                    Expect(Errno.ENAMETOOLONG, () => _fs.Open(B(tooLong), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4));
                    Expect(Errno.ENAMETOOLONG, () => _fs.Open(B(tooLong), OpenFlags.RdOnly, 0));
                    Expect(Errno.ENAMETOOLONG, () => _fs.Mkdir(B(tooLong), 0x1ED));
                    Expect(Errno.ENAMETOOLONG, () => _fs.Symlink(B("x"), B(tooLong)));
                    Expect(Errno.ENAMETOOLONG, () => _fs.Unlink(B(tooLong)));
                    if (file != null) Expect(Errno.ENAMETOOLONG, () => _fs.Rename(B(file), B(tooLong)));
                    if (file != null) Expect(Errno.ENAMETOOLONG, () => _fs.Link(B(file), B(tooLong)));
                    break;
                case 6 when file != null:
                    TooBig(file);
                    break;
            }
            if (file != null) _m.AssertEngineReads(_fs, file, Label);
        }

        // s_maxbytes: at or past it EFBIG; a write across it is cut short there (the kernel's
        // generic_write_check_limits), which this undoes with a truncate.
        private void TooBig(string file)
        {
            var f = _m.Files[file];
            WithFd(file, fd =>
            {
                Expect(Errno.EFBIG, () => _fs.Pwrite(fd, [1], MaxBytes));
                Expect(Errno.EFBIG, () => _fs.Ftruncate(fd, MaxBytes + 1));
                Expect(Errno.EFBIG, () => _fs.Fallocate(fd, 0, MaxBytes - Bs, Bs + 1));
                Expect(Errno.EFBIG, () => _fs.Fallocate(fd, FallocFlags.KeepSize, MaxBytes - Bs, Bs + 1));
                if (_rng.Next(3) > 0) return 0;
                Assert.Equal(2, _fs.Pwrite(fd, [7, 8, 9, 10], MaxBytes - 2));
                Assert.Equal((ulong)MaxBytes, _fs.Statx(fd, [], AtFlags.EmptyPath, StatxMask.BasicStats).Size);
                var tail = new byte[8];
                Assert.Equal(2, _fs.Pread(fd, tail, MaxBytes - 2));
                Assert.Equal(new byte[] { 7, 8 }, tail[..2]);
                _fs.Ftruncate(fd, f.Length);
                return 0;
            });
        }

        // Writes 1 MiB, then smaller, chunks into new files until not one block is left; every
        // failed call must leave the model intact, and e2fsck must be clean right after. Then
        // the filler goes (but the last file) and the freed space is usable at once.
        private void FillBlocks()
        {
            _phase = "fill-blocks";
            _fs.Mkdir("/fill"u8, 0x1ED);
            _m.AddDir("/fill");
            var fills = new List<string>();
            int chunk = 1 << 20;
            string? cur = null;
            for (; ; _step++)
            {
                if (cur == null || _m.Files[cur].Length >= 8 << 20)
                {
                    cur = "/fill/f" + fills.Count;
                    _fs.Close(_fs.Open(B(cur), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, 0x1A4));
                    _m.AddFile(cur, new ModelFile { Touched = true });
                    fills.Add(cur);
                }
                var f = _m.Files[cur];
                var d = RandomBytes(chunk);
                try
                {
                    long n = WithFd(cur, fd => _fs.Pwrite(fd, d, f.Length));
                    Assert.InRange(n, 1, chunk); // short when the space ends inside it, as in the kernel
                    f.Write(f.Length, d.AsSpan(0, (int)n));
                }
                catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC)
                {
                    _m.AssertEngineReads(_fs, cur, Label); // nothing half done
                    if (chunk <= Bs) break;
                    chunk = Math.Max(Bs, chunk / 4);
                }
            }
            FullProbes(cur);
            Remount();
            // still full after reopening: the free counts on disk said so too
            Expect(Errno.ENOSPC, () => WithFd(cur, fd => _fs.Pwrite(fd, new byte[Bs], _m.Files[cur].Length)));
            foreach (var p in fills.Where(p => p != cur))
            {
                _fs.Unlink(B(p));
                _m.Remove(p);
            }
            // the freed blocks are allocatable without waiting for a commit (ext4 commits and retries)
            var again = RandomBytes(1 << 20);
            var g = _m.Files[cur];
            Assert.Equal(again.Length, WithFd(cur, fd => _fs.Pwrite(fd, again, g.Length)));
            g.Write(g.Length, again);
        }

        // Every call that needs a block fails with ENOSPC and leaves no trace.
        private void FullProbes(string cur)
        {
            var f = _m.Files[cur];
            var dir = NewName("/fill");
            Expect(Errno.ENOSPC, () => _fs.Mkdir(B(dir), 0x1ED));
            AssertMissing(dir);
            var link = NewName("/fill");
            Expect(Errno.ENOSPC, () => _fs.Symlink(B(new string('s', 100)), B(link)));
            AssertMissing(link);
            WithFd(cur, fd =>
            {
                var before = _fs.Fiemap(fd, 0, 1L << 42);
                long end = (f.Length + Bs - 1) / Bs * Bs;
                Expect(Errno.ENOSPC, () => _fs.Pwrite(fd, [1], end + (1 << 20)));
                Expect(Errno.ENOSPC, () => _fs.Fallocate(fd, 0, end, Bs));
                Expect(Errno.ENOSPC, () => _fs.Fallocate(fd, FallocFlags.KeepSize, end, 3 * Bs));
                Expect(Errno.ENOSPC, () => _fs.AllocAligned(fd, (end + 65535) / 65536 * 65536, 65536, 65536, 0));
                Assert.Equal(before, _fs.Fiemap(fd, 0, 1L << 42));
                // from inside the last block on into the hole after it: the bytes up to the end of
                // that block fit, so that much is written and reported
                long from = Math.Max(0, f.Length - 1000);
                var d = RandomBytes(5000 + Bs);
                Assert.Equal(end - from, _fs.Pwrite(fd, d, from));
                f.Write(from, d.AsSpan(0, (int)(end - from)));
                return 0;
            });
            _m.AssertEngineReads(_fs, cur, Label);
        }

        [GeneratedRegex(@"^Free inodes:\s+(\d+)", RegexOptions.Multiline)]
        private static partial Regex FreeInodesLine();

        // Empty files in new directories until no inode is left; then a hard link still works
        // (it needs none) while mkdir and symlink fail cleanly; then most of them go again.
        private void FillInodes()
        {
            _phase = "fill-inodes";
            _fs.Mkdir("/inodes"u8, 0x1ED);
            _m.AddDir("/inodes");
            var made = new List<string>();
            string dir = "";
            for (; ; _step++)
            {
                if (made.Count % 1500 == 0)
                {
                    dir = "/inodes/d" + made.Count / 1500;
                    try { _fs.Mkdir(B(dir), 0x1ED); }
                    catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC) { AssertMissing(dir); dir = "/inodes/d0"; break; }
                    _m.AddDir(dir);
                }
                var p = dir + "/e" + made.Count;
                try { _fs.Close(_fs.Open(B(p), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, 0x1A4)); }
                catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC) { AssertMissing(p); break; }
                _m.AddFile(p, new ModelFile());
                made.Add(p);
            }
            var sym = NewName(dir);
            Expect(Errno.ENOSPC, () => _fs.Symlink(B("x"), B(sym)));
            AssertMissing(sym);
            var sub = NewName(dir);
            Expect(Errno.ENOSPC, () => _fs.Mkdir(B(sub), 0x1ED));
            AssertMissing(sub);
            if (PickFile() is { } src)
            {
                var l = NewName(dir);
                _fs.Link(B(src), B(l));
                _m.AddFile(l, _m.Files[src]);
            }
            Remount();
            var (rc, header) = Tools.Run(Tools.RequireTool("dumpe2fs"), ["-h", ImagePath]);
            Assert.True(rc == 0, header);
            Assert.Equal("0", FreeInodesLine().Match(header).Groups[1].Value);
            Expect(Errno.ENOSPC, () => _fs.Open(B(dir + "/after-reopen"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4));
            foreach (var p in made.Where(_ => _rng.Next(100) > 1))
            {
                _fs.Unlink(B(p));
                _m.Remove(p);
            }
            foreach (var d in _m.Dirs.Keys.Where(d => d.StartsWith("/inodes/", StringComparison.Ordinal) && _m.Dirs[d].Count == 0).ToList())
            {
                _fs.Rmdir(B(d));
                _m.Remove(d);
            }
        }
    }
}
