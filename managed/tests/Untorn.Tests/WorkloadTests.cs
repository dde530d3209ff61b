using System.Text;

namespace Untorn.Tests;

/// <summary>
/// One seeded workload per writable mkfs config mixing every operation the engine has — create,
/// writes at random offsets and sizes, aligned allocations of 4 KiB–1 MiB, truncate, punch, zero
/// range, fallocate, unlink (also of open files), rename of files and directories, mkdir, rmdir,
/// link, symlink, the errno contract — with the filesystem filled to ENOSPC on blocks and then on
/// inodes (each failed call must change nothing: the model still holds and e2fsck is clean right
/// after), then emptied again and used further. The image starts as the fixture tree and is held
/// against a model of it by e2fsck -fn, debugfs (contents and extents = untorn's fiemap) and, as
/// root, the kernel. A failure names the seed; UNTORN_WORKLOAD_SEED reruns one.
/// </summary>
public partial class WorkloadTests
{
    [Theory]
    [InlineData("ext4-4k", 101)]
    [InlineData("ext4-1k", 102)]
    [InlineData("ext4-no64-nocsum", 103)]
    [InlineData("ext4-128inode", 104)]
    [InlineData("ext4-metabg", 105)]
    public void MixedWorkload_FillToEnospcAndBack_ImageMatchesModel(string config, int seed)
    {
        TestImages.Require();
        Tools.RequireTool("e2fsck");
        Tools.RequireTool("debugfs");
        if (Environment.GetEnvironmentVariable("UNTORN_WORKLOAD_SEED") is { Length: > 0 } s) seed = int.Parse(s);
        var image = TestImages.CopyOf(config);
        var w = new Workload(image, config, seed);
        try
        {
            w.Run();
        }
        catch (Exception e) when (e is not Xunit.Sdk.SkipException)
        {
            throw new InvalidOperationException($"{w.Label} (rerun: UNTORN_WORKLOAD_SEED={seed}): {e.Message}", e);
        }
        finally
        {
            try { w.Dispose(); } catch (Exception) { } // only after a failure, which is the report
            File.Delete(image);
        }
    }

    private sealed partial class Workload(string image, string config, int seed) : IDisposable
    {
        private const long MaxOffset = 12L << 20; // keeps the random files small next to the image
        private readonly Random _rng = new(seed);
        private readonly TreeModel _m = TreeModel.FromDirectory(TestImages.Tree);
        private Ext4Fs _fs = Ext4Fs.Open(image);
        private int _step, _names;
        private string _phase = "start";

        public string Label => $"{config} seed {seed} {_phase} step {_step}";
        private string ImagePath => image;
        private int Bs => _fs.Super.BlockSize;
        private long MaxBytes => ((1L << 32) - 1) * Bs; // the kernel's s_maxbytes for extent files

        private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

        private bool _closed;

        public void Dispose()
        {
            if (!_closed) _fs.Dispose();
            _closed = true;
        }

        public void Run()
        {
            foreach (var defect in TestImages.MkfsDefects(config)) // mke2fs copied them wrongly: not part of the model
            {
                _fs.Unlink(B(defect));
                _m.Remove(defect);
            }
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var times = new List<string>();
            void Timed(Action phase)
            {
                phase();
                times.Add($"{_phase} {clock.ElapsedMilliseconds} ms");
                clock.Restart();
            }
            Timed(() => RandomOps("random-1", 1200));
            Remount();
            Timed(FillBlocks);
            Timed(() => RandomOps("random-2", 400));
            Timed(FillInodes);
            Timed(() => RandomOps("random-3", 1000));
            _phase = "final";
            Dispose();
            Timed(() => _m.AssertImageMatches(image, Label, _rng));
            Oracles.Note($"{config} seed {seed}: {_step} steps; {string.Join(", ", times)}");
        }

        // Close (committing everything), check with e2fsck, open again.
        private void Remount()
        {
            _fs.Dispose();
            Oracles.AssertFsckClean(image, Label);
            _fs = Ext4Fs.Open(image);
        }

        private void RandomOps(string phase, int count)
        {
            _phase = phase;
            for (int i = 0; i < count; i++, _step++)
            {
                int op = _rng.Next(100);
                if (Footprint() > SpaceBudget) ShrinkSomething(); // ENOSPC is for the fill phases
                else if (op < 12) Create();
                else if (op < 32) Write();
                else if (op < 38) Aligned();
                else if (op < 44) Truncate();
                else if (op < 49) Punch();
                else if (op < 52) ZeroRange();
                else if (op < 56) Reserve();
                else if (op < 62) Unlink();
                else if (op < 64) UnlinkWhileOpen();
                else if (op < 68) RenameFile();
                else if (op < 71) Mkdir();
                else if (op < 73) Rmdir();
                else if (op < 75) RenameDir();
                else if (op < 77) Link();
                else if (op < 79) Symlink();
                else if (op < 92) Errors();
                else if (op < 97) { var p = PickFile(); if (p != null) _m.AssertEngineReads(_fs, p, Label); }
                else if (op < 99) _fs.Sync();
                else Remount();
            }
        }

        private long SpaceBudget => (long)_fs.Super.BlocksCount * Bs / 3;

        private long Footprint() => _m.Files.Values.Where(f => f.Touched).Distinct().Sum(f => f.Footprint);

        private void ShrinkSomething()
        {
            var big = _m.Files.Where(kv => kv.Value.Touched).OrderByDescending(kv => kv.Value.Footprint).Take(10).ToList();
            var (p, f) = big[_rng.Next(big.Count)];
            if (_rng.Next(2) == 0) { Unlink(p); return; }
            WithFd(p, fd => { _fs.Ftruncate(fd, f.Length / 4); return 0; });
            f.SetLength(f.Length / 4);
        }

        // --- picking -------------------------------------------------------------------------

        private string? PickFile()
        {
            // mostly files the workload already changed, so they take many operations each
            var touched = _rng.Next(5) > 0 ? _m.Files.Where(kv => kv.Value.Touched).Select(kv => kv.Key).ToList() : [];
            var from = touched.Count > 0 ? touched : _m.Files.Keys.ToList();
            return from.Count == 0 ? null : from[_rng.Next(from.Count)];
        }

        private string PickDir() => _m.Dirs.Keys.ElementAt(_rng.Next(_m.Dirs.Count));

        private string NewName(string dir)
        {
            string name = $"w{_names++}-";
            name += _rng.Next(40) == 0 ? new string('L', 255 - name.Length) : new string((char)('a' + _rng.Next(26)), _rng.Next(0, 30));
            return TreeModel.Join(dir, name);
        }

        private byte[] RandomBytes(int n)
        {
            var d = new byte[n];
            _rng.NextBytes(d);
            return d;
        }

        private int RandomSize() => _rng.Next(10) switch
        {
            < 6 => _rng.Next(1, 9000),
            < 9 => _rng.Next(1, 128 << 10),
            _ => _rng.Next(1, 1 << 20),
        };

        private T WithFd<T>(string path, Func<int, T> body)
        {
            int fd = _fs.Open(B(path), OpenFlags.RdWr, 0);
            try { return body(fd); }
            finally { _fs.Close(fd); }
        }

        // --- operations ----------------------------------------------------------------------

        private void Create()
        {
            var path = NewName(PickDir());
            var f = new ModelFile { Touched = true };
            int fd = _fs.Open(B(path), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, 0x1A4);
            try
            {
                if (_rng.Next(3) > 0)
                {
                    long off = _rng.Next(4) == 0 ? _rng.Next(300_000) : 0;
                    var d = RandomBytes(RandomSize());
                    Assert.Equal(d.Length, _fs.Pwrite(fd, d, off));
                    f.Write(off, d);
                }
            }
            finally { _fs.Close(fd); }
            _m.AddFile(path, f);
        }

        private void Write()
        {
            if (PickFile() is not { } p) return;
            var f = _m.Files[p];
            long off = _rng.Next(10) switch
            {
                < 4 => _rng.NextInt64(f.Length + 1),
                < 7 => f.Length,
                < 9 => f.Length + _rng.Next(200_000),
                _ => _rng.NextInt64(4L << 20),
            };
            var d = RandomBytes(RandomSize());
            if (off + d.Length > MaxOffset) return;
            int how = _rng.Next(10);
            if (how < 7) Assert.Equal(d.Length, WithFd(p, fd => _fs.Pwrite(fd, d, off)));
            else
            {
                // pwritev2 with up to three segments; sometimes RWF_DSYNC, sometimes RWF_APPEND (at EOF whatever the offset)
                int cut1 = _rng.Next(d.Length + 1), cut2 = _rng.Next(cut1, d.Length + 1);
                IoSegment[] iov = [new(0, d.AsMemory(0, cut1)), new(0, d.AsMemory(cut1, cut2 - cut1)), new(0, d.AsMemory(cut2))];
                int flags = how == 7 ? RwfFlags.DSync : how == 8 ? RwfFlags.Append : 0;
                if (how == 8) off = f.Length;
                Assert.Equal(d.Length, WithFd(p, fd => _fs.Pwritev2(fd, iov, off, flags)));
            }
            f.Write(off, d);
        }

        // untorn_alloc_aligned past the mapped part of a file (4 KiB–1 MiB units), then maybe written into.
        private void Aligned()
        {
            string p;
            if (_rng.Next(3) == 0 || PickFile() is not { } existing)
            {
                p = NewName(PickDir());
                _fs.Close(_fs.Open(B(p), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, 0x1A4));
                _m.AddFile(p, new ModelFile { Touched = true });
            }
            else p = existing;
            var f = _m.Files[p];
            int align = 1 << _rng.Next(Math.Max(12, System.Numerics.BitOperations.Log2((uint)Bs)), 21);
            int units = _rng.Next(1, align >= 512 << 10 ? 3 : 5);
            bool keep = _rng.Next(2) == 0;
            WithFd(p, fd =>
            {
                var before = _fs.Fiemap(fd, 0, 1L << 42);
                long mappedEnd = before.Count == 0 ? 0 : (long)(before[^1].Logical + before[^1].Length);
                long start = (Math.Max(f.Length, mappedEnd) + align - 1) / align * align + (_rng.Next(3) == 0 ? align : 0);
                long len = (long)units * align;
                if (start + len > MaxOffset) return 0;
                try { _fs.AllocAligned(fd, start, len, (uint)align, keep ? 1u : 0u); }
                catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC)
                {
                    Assert.Equal(before, _fs.Fiemap(fd, 0, 1L << 42)); // nothing half done
                    return 0;
                }
                var map = _fs.Fiemap(fd, start, len);
                for (long u = start; u < start + len; u += align)
                    Assert.Contains(map, e => (long)e.Logical <= u && u + align <= (long)(e.Logical + e.Length)
                        && ((long)e.Physical + (u - (long)e.Logical)) % align == 0 && (e.Flags & FileExtent.FlagUnwritten) != 0);
                if (!keep && start + len > f.Length) f.SetLength(start + len);
                f.Reserved(start + len);
                f.Touched = true;
                if (_rng.Next(2) == 0)
                {
                    var d = RandomBytes(_rng.Next(1, align + 1));
                    long at = start + _rng.Next(units) * (long)align;
                    Assert.Equal(d.Length, _fs.Pwrite(fd, d, at));
                    f.Write(at, d);
                }
                return 0;
            });
        }

        private void Truncate()
        {
            if (PickFile() is not { } p) return;
            var f = _m.Files[p];
            long len = _rng.Next(3) switch
            {
                0 => _rng.NextInt64(f.Length + 1),
                1 => f.Length + _rng.Next(300_000),
                _ => _rng.NextInt64(f.Length / 2, f.Length * 3 / 2 + 2),
            };
            if (len > MaxOffset) return;
            if (len == 0 && _rng.Next(2) == 0) _fs.Close(_fs.Open(B(p), OpenFlags.RdWr | OpenFlags.Trunc, 0)); // O_TRUNC
            else WithFd(p, fd => { _fs.Ftruncate(fd, len); return 0; });
            f.SetLength(len);
        }

        private (string Path, ModelFile F, long Off, long Len)? Range()
        {
            if (PickFile() is not { } p) return null;
            var f = _m.Files[p];
            long off = _rng.NextInt64(f.Length + 65536), len = _rng.Next(1, 512 << 10);
            return off + len > MaxOffset ? null : (p, f, off, len);
        }

        private void Punch()
        {
            if (Range() is not var (p, f, off, len)) return;
            WithFd(p, fd => { _fs.Fallocate(fd, FallocFlags.PunchHole | FallocFlags.KeepSize, off, len); return 0; });
            f.Zero(off, len);
        }

        private void ZeroRange()
        {
            if (Range() is not var (p, f, off, len)) return;
            bool keep = _rng.Next(2) == 0;
            WithFd(p, fd => { _fs.Fallocate(fd, FallocFlags.ZeroRange | (keep ? FallocFlags.KeepSize : 0), off, len); return 0; });
            f.Zero(off, len);
            if (!keep && off + len > f.Length) f.SetLength(off + len);
        }

        private void Reserve()
        {
            if (Range() is not var (p, f, off, len)) return;
            bool keep = _rng.Next(2) == 0;
            WithFd(p, fd => { _fs.Fallocate(fd, keep ? FallocFlags.KeepSize : 0, off, len); return 0; });
            f.Touched = true;
            f.Reserved(off + len);
            if (!keep && off + len > f.Length) f.SetLength(off + len);
        }

        private void Unlink() { if (PickFile() is { } p) Unlink(p); }

        private void Unlink(string p)
        {
            _fs.Unlink(B(p));
            _m.Remove(p);
            Expect(Errno.ENOENT, () => _fs.Open(B(p), OpenFlags.RdOnly, 0));
        }

        // Written through a descriptor after its last name is gone; freed at the close.
        private void UnlinkWhileOpen()
        {
            if (PickFile() is not { } p) return;
            var f = _m.Files[p];
            int fd = _fs.Open(B(p), OpenFlags.RdWr, 0);
            try
            {
                _fs.Unlink(B(p));
                _m.Remove(p);
                var d = RandomBytes(RandomSize());
                Assert.Equal(d.Length, _fs.Pwrite(fd, d, f.Length));
                f.Write(f.Length, d); // other hard links see it too
                var back = new byte[f.Length];
                Assert.Equal(f.Length, _fs.Pread(fd, back, 0));
                Assert.True(back.AsSpan().SequenceEqual(f.Content), $"{Label}: an unlinked open file reads differently");
            }
            finally { _fs.Close(fd); }
        }

        private void RenameFile()
        {
            if (PickFile() is not { } src) return;
            string dst = _rng.Next(3) == 0 && PickFile() is { } other ? other : NewName(PickDir());
            if (_m.Files.TryGetValue(dst, out var g) && ReferenceEquals(g, _m.Files[src]) && dst != src)
            {
                _fs.Rename(B(src), B(dst)); // two names of one inode: rename does nothing
                return;
            }
            _fs.Rename(B(src), B(dst));
            if (src != dst) _m.Rename(src, dst);
        }

        private void Mkdir()
        {
            var d = NewName(PickDir());
            _fs.Mkdir(B(d), 0x1ED);
            _m.AddDir(d);
        }

        private IEnumerable<string> MovableDirs() => _m.Dirs.Keys.Where(d => d != "/" && d != "/lost+found");

        private void Rmdir()
        {
            var empty = MovableDirs().Where(d => _m.Dirs[d].Count == 0).ToList();
            if (empty.Count == 0) return;
            var d = empty[_rng.Next(empty.Count)];
            _fs.Rmdir(B(d));
            _m.Remove(d);
        }

        private static bool Under(string p, string dir) => p == dir || p.StartsWith(dir + "/", StringComparison.Ordinal);

        private void RenameDir()
        {
            var dirs = MovableDirs().ToList();
            if (dirs.Count == 0) return;
            var d = dirs[_rng.Next(dirs.Count)];
            var targets = _m.Dirs.Keys.Where(x => !Under(x, d)).ToList();
            // sometimes over an empty directory elsewhere (not one of d's ancestors)
            var emptyTargets = targets.Where(x => x != "/" && x != "/lost+found" && _m.Dirs[x].Count == 0).ToList();
            string to = _rng.Next(4) == 0 && emptyTargets.Count > 0 ? emptyTargets[_rng.Next(emptyTargets.Count)] : NewName(targets[_rng.Next(targets.Count)]);
            _fs.Rename(B(d), B(to));
            _m.Rename(d, to);
            Expect(Errno.EINVAL, () => _fs.Rename(B(to), B(to + "/inside")));
        }

        private void Link()
        {
            if (PickFile() is not { } src) return;
            var dst = NewName(PickDir());
            _fs.Link(B(src), B(dst));
            _m.AddFile(dst, _m.Files[src]);
        }

        private void Symlink()
        {
            var p = NewName(PickDir());
            var target = "t/" + new string((char)('a' + _rng.Next(26)), _rng.Next(1, Math.Min(300, Bs - 3)));
            _fs.Symlink(B(target), B(p));
            _m.AddSymlink(p, target);
        }

        private void Expect(int errno, Action call)
        {
            var e = Assert.Throws<Ext4Exception>(call);
            Assert.True(e.Errno == errno, $"{Label}: expected {Errno.Describe(errno)}, got {Errno.Describe(e.Errno)} ({e.Message})");
        }
    }
}
