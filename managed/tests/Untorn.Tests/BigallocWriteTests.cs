using System.Text;
using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// The write engine on bigalloc images (cluster 16K and 64K over 4K blocks, 4K over 1K blocks):
/// seeded random workloads and targeted cases, judged by e2fsck -fn, debugfs (contents, extents,
/// Blockcount), dumpe2fs (free counts) and, as root, the kernel reading a read-only loop mount.
/// </summary>
public partial class BigallocWriteTests
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    private const int Mode = 0x1A4;

    /// <summary>mke2fs options, image size in MiB.</summary>
    public static TheoryData<string, int> Configs => new()
    {
        { "-b 4096 -O bigalloc -C 16384", 64 },
        { "-b 4096 -O bigalloc -C 65536", 128 },
        { "-b 1024 -O bigalloc -C 4096", 64 },
        { "-b 4096 -O bigalloc -C 16384 -g 8192", 128 }, // four groups: runs and frees across group bounds
    };

    private static string MakeImage(string options, int mib)
    {
        var image = Path.Combine(Path.GetTempPath(), $"untorn-bigalloc-{Guid.NewGuid():N}.img");
        using (var f = File.Create(image)) f.SetLength((long)mib << 20);
        var (rc, output) = Tools.Run(Tools.RequireTool("mke2fs"), ["-q", "-F", "-t", "ext4", .. options.Split(' '), image]);
        Assert.True(rc == 0, output);
        return image;
    }

    [GeneratedRegex(@"^Free blocks:\s+(\d+)", RegexOptions.Multiline)]
    private static partial Regex FreeBlocksLine();

    [GeneratedRegex(@"Blockcount:\s+(\d+)")]
    private static partial Regex BlockcountLine();

    /// <summary>The superblock's free blocks as dumpe2fs prints them (clusters × blocks per cluster with bigalloc).</summary>
    private static long DumpFreeBlocks(string image)
    {
        var (rc, output) = Tools.Run(Tools.RequireTool("dumpe2fs"), ["-h", image]);
        Assert.True(rc == 0, output);
        return long.Parse(FreeBlocksLine().Match(output).Groups[1].Value);
    }

    /// <summary>i_blocks (512-byte sectors) as debugfs reports it.</summary>
    private static long DebugfsSectors(string image, string path)
    {
        var (rc, output) = Tools.Run(Tools.RequireTool("debugfs"), ["-R", $"stat {path}", image]);
        var m = BlockcountLine().Match(output);
        Assert.True(rc == 0 && m.Success, output);
        return long.Parse(m.Groups[1].Value);
    }

    // Runs merged where both the logical and physical blocks continue with the same flag, so that
    // extent boundaries (debugfs) and fiemap runs compare as mappings, not as tree layouts.
    private static List<(ulong L, ulong P, ulong N, bool U)> Merge(IEnumerable<(ulong L, ulong P, ulong N, bool U)> runs)
    {
        var result = new List<(ulong L, ulong P, ulong N, bool U)>();
        foreach (var r in runs.OrderBy(r => r.L))
        {
            if (result.Count > 0 && result[^1] is var last && last.L + last.N == r.L && last.P + last.N == r.P && last.U == r.U)
                result[^1] = last with { N = last.N + r.N };
            else result.Add(r);
        }
        return result;
    }

    private sealed class Workload(Ext4Fs fs, Random rng, int bs, int cluster)
    {
        public readonly Dictionary<string, List<byte>> Files = [];
        public readonly Dictionary<string, int> Fds = [];
        public readonly List<string> Dirs = ["/"];
        public readonly Dictionary<string, string> Symlinks = [];
        private int _names;

        private string NewName(string prefix)
        {
            var dir = Dirs[rng.Next(Dirs.Count)];
            return (dir == "/" ? "/" : dir + "/") + prefix + _names++;
        }

        private string? AnyFile() => Files.Count == 0 ? null : Files.Keys.ElementAt(rng.Next(Files.Count));

        public void Step(int step)
        {
            int op = rng.Next(100);
            if (op < 8 || Files.Count == 0)
            {
                var p = NewName("f");
                Fds[p] = fs.Open(B(p), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, Mode);
                Files[p] = [];
                return;
            }
            if (op < 12) { var d = NewName("d"); fs.Mkdir(B(d), 0x1ED); Dirs.Add(d); return; }
            if (op < 15) { var s = NewName("s"); var t = new string((char)('a' + step % 26), 61 + rng.Next(bs - 62)); fs.Symlink(B(t), B(s)); Symlinks[s] = t; return; }
            var f = AnyFile()!;
            if (op < 18)
            {
                fs.Close(Fds[f]);
                Fds.Remove(f);
                fs.Unlink(B(f));
                Files.Remove(f);
                return;
            }
            if (op < 23)
            {
                // A second name shares the file (and its model); each name has its own descriptor.
                var link = NewName("l");
                fs.Link(B(f), B(link));
                Files[link] = Files[f];
                Fds[link] = fs.Open(B(link), OpenFlags.RdWr, 0);
                return;
            }
            if (op < 26)
            {
                var to = NewName("r");
                fs.Rename(B(f), B(to));
                Files[to] = Files[f];
                Files.Remove(f);
                Fds[to] = Fds[f];
                Fds.Remove(f);
                return;
            }
            var m = Files[f];
            int fd = Fds[f];
            if (op < 50) Write(fd, m);
            else if (op < 60)
            {
                int len = rng.Next(3) == 0 ? rng.Next(0, m.Count + 1) : rng.Next(0, 400_000);
                fs.Ftruncate(fd, len);
                if (m.Count > len) m.RemoveRange(len, m.Count - len);
                while (m.Count < len) m.Add(0);
            }
            else if (op < 75) Fallocate(fd, m);
            else if (op < 85) Aligned(fd, m);
            else fs.Fsync(fd);
        }

        private void Write(int fd, List<byte> m)
        {
            long off = rng.Next(4) switch { 0 => m.Count, 1 => rng.Next(0, 2_000_000), _ => rng.Next(0, 300_000) };
            int len = rng.Next(2) == 0 ? rng.Next(1, cluster + 1) : rng.Next(1, 80_000);
            var d = new byte[len];
            rng.NextBytes(d);
            fs.Pwrite(fd, d, off);
            while (m.Count < off + len) m.Add(0);
            for (int i = 0; i < len; i++) m[(int)off + i] = d[i];
        }

        private void Fallocate(int fd, List<byte> m)
        {
            long off = rng.Next(0, 350_000), len = rng.Next(1, 3 * cluster + 5000);
            int mode = new[] { 0, FallocFlags.KeepSize, FallocFlags.PunchHole | FallocFlags.KeepSize, FallocFlags.ZeroRange, FallocFlags.ZeroRange | FallocFlags.KeepSize }[rng.Next(5)];
            fs.Fallocate(fd, mode, off, len);
            bool keep = (mode & FallocFlags.KeepSize) != 0;
            if ((mode & (FallocFlags.PunchHole | FallocFlags.ZeroRange)) != 0)
                for (long i = off; i < Math.Min(off + len, m.Count); i++) m[(int)i] = 0;
            if (!keep) while (m.Count < off + len) m.Add(0);
        }

        private void Aligned(int fd, List<byte> m)
        {
            int align = 1 << rng.Next(14, 21); // 16K .. 1M
            long off = (long)align * rng.Next(0, 6), len = (long)align * rng.Next(1, 3);
            uint flags = (uint)rng.Next(2);
            var before = fs.Fiemap(fd, 0, long.MaxValue / 2);
            try { fs.AllocAligned(fd, off, len, (uint)align, flags); }
            catch (Ext4Exception e) when (e.Errno == Errno.EINVAL)
            {
                // Some unit was already mapped otherwise: all or nothing.
                Assert.Equal(before, fs.Fiemap(fd, 0, long.MaxValue / 2));
                return;
            }
            var map = fs.Fiemap(fd, off, len).Select(x => (x.Logical, x.Physical, x.Length, false));
            AssertUnitsAligned(map, (ulong)off, (ulong)len, (ulong)align, "engine fiemap");
            if (flags == 0) while (m.Count < off + len) m.Add(0);
        }
    }

    /// <summary>Every align-sized unit of [off, off + len) (bytes) lies in one physically contiguous run starting at a multiple of align.</summary>
    private static void AssertUnitsAligned(IEnumerable<(ulong L, ulong P, ulong N, bool U)> runsInBytes, ulong off, ulong len, ulong align, string label)
    {
        var runs = Merge(runsInBytes.Select(r => r with { U = false }));
        for (ulong u = off; u < off + len; u += align)
        {
            var r = runs.SingleOrDefault(x => x.L <= u && u < x.L + x.N);
            Assert.True(r.N != 0, $"{label}: unit at {u} is not mapped");
            ulong phys = r.P + (u - r.L);
            Assert.True(phys % align == 0, $"{label}: unit at {u} starts at byte {phys}, not {align}-aligned");
            Assert.True(u + align <= r.L + r.N, $"{label}: unit at {u} is not one contiguous run");
        }
    }

    [Theory]
    [MemberData(nameof(Configs))]
    public void RandomWorkload_Bigalloc_FsckDebugfsDumpe2fsAndKernelAgree(string options, int mib)
    {
        var image = MakeImage(options, mib);
        try
        {
            long freeBefore = DumpFreeBlocks(image), rootBefore = DebugfsSectors(image, "/");
            int bs, cluster;
            Workload w;
            var fiemaps = new Dictionary<string, List<FileExtent>>();
            using (var fs = Ext4Fs.Open(image))
            {
                bs = fs.Super.BlockSize;
                cluster = fs.Super.ClusterSize;
                int seed = options.Length * 31 + mib;
                w = new Workload(fs, new Random(seed), bs, cluster);
                for (int step = 0; step < 300; step++)
                {
                    w.Step(step);
                    foreach (var (f, m) in w.Files)
                    {
                        var back = new byte[m.Count + 1];
                        Assert.True(fs.Pread(w.Fds[f], back, 0) == m.Count && back.AsSpan(0, m.Count).SequenceEqual(m.ToArray()), $"{options} step {step}: engine reads {f} differently");
                    }
                }
                foreach (var (f, fd) in w.Fds)
                {
                    fiemaps[f] = fs.Fiemap(fd, 0, long.MaxValue / 2);
                    fs.Close(fd);
                }
            }
            FileSpaceTests.AssertFsck(image, options);
            long sectors = DebugfsSectors(image, "/") - rootBefore;
            // One name per inode: hard links share their model list.
            var inodes = w.Files.GroupBy(p => p.Value, ReferenceEqualityComparer.Instance).Select(g => g.First().Key);
            foreach (var f in inodes.Concat(w.Dirs.Skip(1)).Concat(w.Symlinks.Keys))
            {
                long s = DebugfsSectors(image, f);
                Assert.True(s % (cluster / 512) == 0, $"{options}: {f} has i_blocks {s}, not whole clusters");
                sectors += s;
            }
            // Clusters taken from the bitmaps equal the clusters the inodes say they hold.
            Assert.Equal(freeBefore - DumpFreeBlocks(image), sectors * 512 / bs);
            foreach (var (f, m) in w.Files)
            {
                Assert.True(FileSpaceTests.Dump(image, f).AsSpan().SequenceEqual(m.ToArray()), $"{options}: debugfs dump of {f} differs from the model");
                var ours = Merge(fiemaps[f].Select(e => (e.Logical / (ulong)bs, e.Physical / (ulong)bs, e.Length / (ulong)bs, (e.Flags & FileExtent.FlagUnwritten) != 0)));
                Assert.Equal(Merge(FileSpaceTests.DebugfsExtents(image, f)), ours);
            }
            KernelReads(image, w.Files.ToDictionary(p => p.Key, p => p.Value.ToArray()), w.Symlinks, options);
            TestContext.Current.SendDiagnosticMessage($"{options}: {w.Files.Count} files ({w.Files.Values.Sum(m => (long)m.Count)} bytes), " +
                $"{w.Dirs.Count - 1} directories, {w.Symlinks.Count} symlinks, {sectors * 512 / cluster} clusters held");
        }
        finally { File.Delete(image); }
    }

    [Theory]
    [MemberData(nameof(Configs))]
    public void ImpliedCluster_BlocksOfOneClusterShareIt_FreedOnlyWithItsLastBlock(string options, int mib)
    {
        var image = MakeImage(options, mib);
        try
        {
            long free0 = DumpFreeBlocks(image), root0 = DebugfsSectors(image, "/");
            int bs, cluster, ratio;
            var model = new byte[0];
            void Edit(Action<Ext4Fs, int> act)
            {
                using var fs = Ext4Fs.Open(image);
                int fd = fs.Open(B("/a"), OpenFlags.RdWr | OpenFlags.Creat, Mode);
                act(fs, fd);
                fs.Close(fd);
            }
            using (var fs = Ext4Fs.Open(image)) (bs, cluster) = (fs.Super.BlockSize, fs.Super.ClusterSize);
            ratio = cluster / bs;
            var rng = new Random(ratio);
            byte[] Data(int n) { var d = new byte[n]; rng.NextBytes(d); return d; }
            var d1 = Data(100);
            var d3 = Data(bs);
            Edit((fs, fd) =>
            {
                fs.Pwrite(fd, d1, bs);
                fs.Fsync(fd);
                int other = fs.Open(B("/b"), OpenFlags.RdWr | OpenFlags.Creat, Mode);
                fs.Pwrite(other, Data(bs), 0); // takes the cluster after /a's
                fs.Close(other);
                fs.Pwrite(fd, d3, (long)(ratio - 1) * bs); // same logical cluster as block 1
            });
            model = new byte[ratio * bs];
            d1.CopyTo(model, bs);
            d3.CopyTo(model, (ratio - 1) * bs);
            FileSpaceTests.AssertFsck(image, options + " two blocks of a cluster");
            ulong Phys(ulong lblk) => FileSpaceTests.DebugfsExtents(image, "/a").Single(e => e.L <= lblk && lblk < e.L + e.N) is var e ? e.P + (lblk - e.L) : 0;
            ulong p1 = Phys(1), pLast = Phys((ulong)ratio - 1);
            Assert.Equal(p1 / (ulong)ratio, pLast / (ulong)ratio);
            Assert.Equal(1UL, p1 % (ulong)ratio);
            Assert.Equal(cluster / 512, DebugfsSectors(image, "/a"));
            long held = free0 - 2 * ratio - (DebugfsSectors(image, "/") - root0) * 512 / bs;
            Assert.Equal(held, DumpFreeBlocks(image));

            // Punching block 1 leaves block ratio-1 in the cluster: nothing is freed.
            Edit((fs, fd) => fs.Fallocate(fd, FallocFlags.PunchHole | FallocFlags.KeepSize, bs, bs));
            Array.Clear(model, bs, bs);
            FileSpaceTests.AssertFsck(image, options + " punched block 1");
            Assert.Equal(held, DumpFreeBlocks(image));
            Assert.Equal(cluster / 512, DebugfsSectors(image, "/a"));

            // A new block 0 goes to offset 0 of the cluster the file already owns.
            var d0 = Data(bs / 2 + 3);
            Edit((fs, fd) => fs.Pwrite(fd, d0, 0));
            d0.CopyTo(model, 0);
            FileSpaceTests.AssertFsck(image, options + " block 0 added");
            Assert.Equal(pLast - (ulong)(ratio - 1), Phys(0));
            Assert.Equal(held, DumpFreeBlocks(image));

            // Truncating to mid-cluster keeps the cluster; truncating its last block away frees it.
            Edit((fs, fd) => fs.Ftruncate(fd, bs + 7));
            model = model[..(bs + 7)];
            FileSpaceTests.AssertFsck(image, options + " truncated mid-cluster");
            Assert.Equal(held, DumpFreeBlocks(image));
            Assert.True(FileSpaceTests.Dump(image, "/a").AsSpan().SequenceEqual(model), "debugfs reads /a differently");
            KernelReads(image, new() { ["/a"] = model }, [], options);
            Edit((fs, fd) => fs.Ftruncate(fd, 0));
            FileSpaceTests.AssertFsck(image, options + " truncated to 0");
            Assert.Equal(held + ratio, DumpFreeBlocks(image));
            Assert.Equal(0, DebugfsSectors(image, "/a"));
        }
        finally { File.Delete(image); }
    }

    public static TheoryData<string, int, int> AlignedConfigs => new()
    {
        { "-b 4096 -O bigalloc -C 16384", 64, 4096 },
        { "-b 4096 -O bigalloc -C 16384", 64, 8192 },
        { "-b 4096 -O bigalloc -C 16384", 64, 16384 },
        { "-b 4096 -O bigalloc -C 16384", 64, 65536 },
        { "-b 4096 -O bigalloc -C 16384", 64, 1 << 20 },
        { "-b 4096 -O bigalloc -C 65536", 128, 16384 },
        { "-b 4096 -O bigalloc -C 65536", 128, 65536 },
        { "-b 4096 -O bigalloc -C 65536", 128, 1 << 20 },
        { "-b 1024 -O bigalloc -C 4096", 64, 1024 },
        { "-b 1024 -O bigalloc -C 4096", 64, 2048 },
        { "-b 1024 -O bigalloc -C 4096", 64, 16384 },
        { "-b 1024 -O bigalloc -C 4096", 64, 1 << 20 },
    };

    [Theory]
    [MemberData(nameof(AlignedConfigs))]
    public void AllocAligned_Bigalloc_UnitsPhysicallyAlignedInBytesPerDebugfs(string options, int mib, int align)
    {
        var image = MakeImage(options, mib);
        try
        {
            var ranges = new List<(long Off, long Len)>();
            byte[] model;
            var rng = new Random(align);
            using (var fs = Ext4Fs.Open(image))
            {
                int bs = fs.Super.BlockSize, cluster = fs.Super.ClusterSize;
                int fd = fs.Open(B("/aligned"), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, Mode);
                model = new byte[(align < cluster ? cluster : 0) + 4L * align];
                if (align < cluster)
                {
                    // The file already owns cluster 0 (its last block): smaller units there use it.
                    var last = new byte[bs];
                    rng.NextBytes(last);
                    fs.Pwrite(fd, last, cluster - bs);
                    last.CopyTo(model, cluster - bs);
                    ranges.Add((0, cluster - align));
                    ranges.Add((cluster, 4L * align));
                }
                else ranges.Add((0, 4L * align));
                foreach (var (off, len) in ranges) fs.AllocAligned(fd, off, len, (uint)align, 0);
                Assert.Equal((ulong)model.Length, fs.Statx(fd, [], AtFlags.EmptyPath, StatxMask.BasicStats).Size);
                foreach (var (off, len) in ranges)
                {
                    var d = new byte[len];
                    rng.NextBytes(d);
                    fs.Pwrite(fd, d, off);
                    d.CopyTo(model, off);
                }
                fs.Close(fd);
            }
            FileSpaceTests.AssertFsck(image, $"{options} align {align}");
            var extents = FileSpaceTests.DebugfsExtents(image, "/aligned");
            int blockSize = options.Contains("-b 1024") ? 1024 : 4096;
            var bytes = extents.Select(e => (e.L * (ulong)blockSize, e.P * (ulong)blockSize, e.N * (ulong)blockSize, e.U));
            foreach (var (off, len) in ranges) AssertUnitsAligned(bytes, (ulong)off, (ulong)len, (ulong)align, $"{options} debugfs");
            Assert.True(FileSpaceTests.Dump(image, "/aligned").AsSpan().SequenceEqual(model), "debugfs reads differently");
            KernelReads(image, new() { ["/aligned"] = model }, [], options);
        }
        finally { File.Delete(image); }
    }

    [Theory]
    [MemberData(nameof(Configs))]
    public void Directories_GrowAcrossClustersThenRemoved_FsckCleanAndClustersReturn(string options, int mib)
    {
        var image = MakeImage(options, mib);
        try
        {
            long free0 = DumpFreeBlocks(image), root0 = DebugfsSectors(image, "/");
            var names = Enumerable.Range(0, 700).Select(i => $"/d/{i:D4}-{new string('n', 110)}").ToList();
            int cluster;
            using (var fs = Ext4Fs.Open(image))
            {
                cluster = fs.Super.ClusterSize;
                fs.Mkdir(B("/d"), 0x1ED);
                foreach (var n in names)
                {
                    int fd = fs.Open(B(n), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, Mode);
                    if (n[3] == '7') fs.Pwrite(fd, B(n), 5000);
                    fs.Close(fd);
                }
                fs.Mkdir(B("/d/sub"), 0x1ED);
                fs.Symlink(B(new string('t', 300)), B("/d/sub/slow"));
            }
            FileSpaceTests.AssertFsck(image, options + " filled");
            long dirSectors = DebugfsSectors(image, "/d");
            Assert.True(dirSectors > cluster / 512 && dirSectors % (cluster / 512) == 0, $"{options}: /d holds {dirSectors} sectors");
            if (Environment.UserName == "root")
            {
                var mnt = image + ".mnt";
                Directory.CreateDirectory(mnt);
                try
                {
                    if (Tools.Run("mount", ["-o", "loop,ro", image, mnt]).ExitCode == 0)
                        try
                        {
                            Assert.Equal(names.Select(n => n[3..]).Append("sub").Order(StringComparer.Ordinal),
                                Directory.GetFileSystemEntries(mnt + "/d").Select(Path.GetFileName).Order(StringComparer.Ordinal));
                            Assert.Equal(new string('t', 300), new FileInfo(mnt + "/d/sub/slow").LinkTarget);
                        }
                        finally { Tools.Run("umount", [mnt]); }
                }
                finally { Directory.Delete(mnt); }
            }
            using (var fs = Ext4Fs.Open(image))
            {
                foreach (var n in names) fs.Unlink(B(n));
                fs.Unlink(B("/d/sub/slow"));
                fs.Rmdir(B("/d/sub"));
                fs.Rmdir(B("/d"));
            }
            FileSpaceTests.AssertFsck(image, options + " emptied");
            Assert.Equal(free0 - (DebugfsSectors(image, "/") - root0) * 512 / (options.Contains("-b 1024") ? 1024 : 4096), DumpFreeBlocks(image));
        }
        finally { File.Delete(image); }
    }

    [GeneratedRegex(@"^\s*0/\s*2\s", RegexOptions.Multiline)]
    private static partial Regex DepthTwoRoot();

    [Theory]
    [InlineData("-b 1024 -O bigalloc -C 4096", 64, 300)]
    [InlineData("-b 4096 -O bigalloc -C 16384", 64, 700)]
    public void TwoExtentsPerCluster_TreeOfDepthTwo_PunchKeepsClustersTruncateFreesAll(string options, int mib, int clusters)
    {
        var image = MakeImage(options, mib);
        try
        {
            long free0 = DumpFreeBlocks(image), root0 = DebugfsSectors(image, "/");
            int bs, ratio;
            var model = new byte[0];
            using (var fs = Ext4Fs.Open(image))
            {
                bs = fs.Super.BlockSize;
                ratio = fs.Super.ClusterSize / bs;
                model = new byte[(long)clusters * ratio * bs];
                var rng = new Random(clusters);
                int fd = fs.Open(B("/many"), OpenFlags.RdWr | OpenFlags.Creat, Mode);
                // Blocks 0 then 2 of every cluster: two extents each, the second in the cluster the first took.
                foreach (int inCluster in new[] { 0, 2 })
                    for (int c = 0; c < clusters; c++)
                    {
                        var d = new byte[bs];
                        rng.NextBytes(d);
                        long off = ((long)c * ratio + inCluster) * bs;
                        fs.Pwrite(fd, d, off);
                        d.CopyTo(model, off);
                    }
                fs.Ftruncate(fd, model.Length);
                fs.Close(fd);
            }
            FileSpaceTests.AssertFsck(image, options + " written");
            var (rc, ex) = Tools.Run(Tools.RequireTool("debugfs"), ["-R", "ex /many", image]);
            Assert.True(rc == 0 && DepthTwoRoot().IsMatch(ex), $"{options}: expected a tree of depth 2:\n{ex[..Math.Min(ex.Length, 400)]}");
            var extents = FileSpaceTests.DebugfsExtents(image, "/many");
            Assert.Equal(2 * clusters, extents.Count);
            for (int c = 0; c < clusters; c++)
            {
                var (b0, b2) = (extents[2 * c], extents[2 * c + 1]);
                Assert.True(b0.L == (ulong)(c * ratio) && b2.L == b0.L + 2 && b2.P == b0.P + 2 && b0.P % (ulong)ratio == 0, $"{options}: cluster {c} maps {b0} and {b2}");
            }
            long sectors = DebugfsSectors(image, "/many");
            Assert.Equal(free0 - DumpFreeBlocks(image), (sectors + DebugfsSectors(image, "/") - root0) * 512 / bs);
            Assert.True(FileSpaceTests.Dump(image, "/many").AsSpan().SequenceEqual(model), "debugfs reads differently");
            KernelReads(image, new() { ["/many"] = model }, [], options);

            long held = DumpFreeBlocks(image);
            using (var fs = Ext4Fs.Open(image))
            {
                int fd = fs.Open(B("/many"), OpenFlags.RdWr, 0);
                for (int c = 0; c < clusters; c++)
                    fs.Fallocate(fd, FallocFlags.PunchHole | FallocFlags.KeepSize, (long)c * ratio * bs, bs);
                fs.Close(fd);
            }
            FileSpaceTests.AssertFsck(image, options + " block 0s punched");
            // Every cluster keeps its block 2; only tree nodes may have gone.
            Assert.Equal(held + (sectors - DebugfsSectors(image, "/many")) * 512 / bs, DumpFreeBlocks(image));
            Assert.True(DebugfsSectors(image, "/many") >= (long)clusters * ratio * bs / 512);
            using (var fs = Ext4Fs.Open(image))
            {
                int fd = fs.Open(B("/many"), OpenFlags.RdWr | OpenFlags.Trunc, 0);
                fs.Close(fd);
            }
            FileSpaceTests.AssertFsck(image, options + " truncated");
            Assert.Equal(0, DebugfsSectors(image, "/many"));
            Assert.Equal(free0 - (DebugfsSectors(image, "/") - root0) * 512 / bs, DumpFreeBlocks(image));
        }
        finally { File.Delete(image); }
    }

    [Fact]
    public void FullFilesystem_NewBlockInOwnedCluster_NeedsNoSpace()
    {
        var image = MakeImage("-b 4096 -O bigalloc -C 16384", 32);
        try
        {
            var a = new byte[16384];
            var fill = new List<byte>();
            var rng = new Random(5);
            using (var fs = Ext4Fs.Open(image))
            {
                int fa = fs.Open(B("/a"), OpenFlags.RdWr | OpenFlags.Creat, Mode);
                rng.NextBytes(a.AsSpan(0, 4096));
                fs.Pwrite(fa, a.AsSpan(0, 4096), 0);
                fs.Close(fa);
                int ff = fs.Open(B("/fill"), OpenFlags.RdWr | OpenFlags.Creat, Mode);
                for (int chunk = 1 << 20; chunk >= 16384; chunk /= 2)
                    while (true)
                    {
                        var d = new byte[chunk];
                        rng.NextBytes(d);
                        try { fs.Pwrite(ff, d, fill.Count); }
                        catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC) { break; } // all or nothing: the model keeps what came before
                        fill.AddRange(d);
                    }
                Assert.Equal(Errno.ENOSPC, Assert.Throws<Ext4Exception>(() => fs.Pwrite(ff, new byte[1], fill.Count + 16384)).Errno);
                fs.Close(ff);
            }
            FileSpaceTests.AssertFsck(image, "filled");
            long free = DumpFreeBlocks(image);
            using (var fs = Ext4Fs.Open(image))
            {
                // Blocks 1..3 of /a live in the cluster block 0 took: no new cluster is needed.
                int fa = fs.Open(B("/a"), OpenFlags.RdWr, 0);
                rng.NextBytes(a.AsSpan(4096));
                fs.Pwrite(fa, a.AsSpan(4096), 4096);
                fs.Close(fa);
            }
            FileSpaceTests.AssertFsck(image, "owned cluster written");
            Assert.Equal(free, DumpFreeBlocks(image));
            Assert.Equal(16384 / 512, DebugfsSectors(image, "/a"));
            Assert.True(FileSpaceTests.Dump(image, "/a").AsSpan().SequenceEqual(a), "debugfs reads /a differently");
            Assert.True(FileSpaceTests.Dump(image, "/fill").AsSpan().SequenceEqual(fill.ToArray()), "debugfs reads /fill differently");
            KernelReads(image, new() { ["/a"] = a, ["/fill"] = fill.ToArray() }, [], "full");
        }
        finally { File.Delete(image); }
    }

    [Theory]
    [MemberData(nameof(Configs))]
    public void KernelWritesIntoOurClusters_UsesTheClusterWeGave(string options, int mib)
    {
        if (Environment.UserName != "root") Assert.Skip("needs root to mount the image read-write (the kernel is the oracle here)");
        var image = MakeImage(options, mib);
        var mnt = image + ".mnt";
        try
        {
            int bs, ratio;
            var model = new List<byte>();
            var rng = new Random(mib);
            using (var fs = Ext4Fs.Open(image))
            {
                bs = fs.Super.BlockSize;
                ratio = fs.Super.ClusterSize / bs;
                int fd = fs.Open(B("/k"), OpenFlags.RdWr | OpenFlags.Creat, Mode);
                var d = new byte[bs / 2];
                rng.NextBytes(d);
                fs.Pwrite(fd, d, 0);
                model.AddRange(d);
                fs.Fallocate(fd, FallocFlags.KeepSize, 2L * bs, bs); // an unwritten block in the same cluster
                fs.Close(fd);
            }
            Directory.CreateDirectory(mnt);
            var (rc, output) = Tools.Run("mount", ["-o", "loop", image, mnt]);
            if (rc != 0) Assert.Skip($"mount -o loop failed: {output.Trim()}");
            try
            {
                using var f = new FileStream(mnt + "/k", FileMode.Open, FileAccess.ReadWrite);
                foreach (long blk in new long[] { 1, ratio - 1, 2 })
                {
                    var d = new byte[bs];
                    rng.NextBytes(d);
                    f.Seek(blk * bs, SeekOrigin.Begin);
                    f.Write(d);
                    while (model.Count < (blk + 1) * bs) model.Add(0);
                    for (int i = 0; i < bs; i++) model[(int)(blk * bs) + i] = d[i];
                }
                f.Flush(true);
            }
            finally { Tools.Run("umount", [mnt]); }
            FileSpaceTests.AssertFsck(image, options + " after the kernel's writes");
            var extents = FileSpaceTests.DebugfsExtents(image, "/k");
            ulong first = extents[0].P;
            Assert.True(first % (ulong)ratio == 0, $"{options}: block 0 at {first}");
            foreach (var e in extents)
                Assert.True(e.P - first == e.L, $"{options}: the kernel put logical {e.L} at {e.P}, outside the cluster at {first}");
            Assert.Equal(ratio * bs / 512, DebugfsSectors(image, "/k"));
            using (var fs = Ext4Fs.Open(image, new OpenOptions { ReadOnly = true }))
            {
                int fd = fs.Open(B("/k"), OpenFlags.RdOnly, 0);
                var back = new byte[model.Count + 1];
                Assert.Equal(model.Count, fs.Pread(fd, back, 0));
                Assert.True(back.AsSpan(0, model.Count).SequenceEqual(model.ToArray()), "untorn reads the kernel's writes differently");
            }
        }
        finally
        {
            if (Directory.Exists(mnt)) Directory.Delete(mnt);
            File.Delete(image);
        }
    }

    private static void KernelReads(string image, Dictionary<string, byte[]> files, Dictionary<string, string> symlinks, string label)
    {
        if (Environment.UserName != "root")
        {
            TestContext.Current.SendDiagnosticMessage($"{label}: kernel read-back skipped (needs root for mount -o loop)");
            return;
        }
        var dir = image + ".mnt";
        Directory.CreateDirectory(dir);
        try
        {
            var (rc, output) = Tools.Run("mount", ["-o", "loop,ro", image, dir]);
            if (rc != 0)
            {
                TestContext.Current.SendDiagnosticMessage($"{label}: kernel read-back skipped (mount failed: {output.Trim()})");
                return;
            }
            try
            {
                foreach (var (f, m) in files)
                    Assert.True(File.ReadAllBytes(dir + f).AsSpan().SequenceEqual(m), $"{label}: the kernel reads {f} differently");
                foreach (var (s, t) in symlinks)
                    Assert.Equal(t, new FileInfo(dir + s).LinkTarget);
            }
            finally { Tools.Run("umount", [dir]); }
        }
        finally { Directory.Delete(dir); }
    }
}
