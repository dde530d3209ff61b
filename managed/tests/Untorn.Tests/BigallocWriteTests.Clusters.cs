using System.Text.RegularExpressions;

namespace Untorn.Tests;

// Targeted bigalloc cases: implied cluster allocation, partial-cluster frees, aligned units in
// bytes, directories and deep trees across clusters, a full filesystem, the kernel writing into
// clusters untorn allocated.
public partial class BigallocWriteTests
{
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
                        finally { Tools.Umount(mnt); }
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
                        long n;
                        try { n = fs.Pwrite(ff, d, fill.Count); }
                        catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC) { break; } // not one byte fit
                        fill.AddRange(d.AsSpan(0, (int)n)); // a short write when the space ran out part way
                        if (n < chunk) break;
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
            finally { Tools.Umount(mnt); }
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
}
