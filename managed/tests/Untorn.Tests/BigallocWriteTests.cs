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
                // Half the time the name goes first and the space at the last close.
                bool openWhileUnlinked = rng.Next(2) == 0;
                if (!openWhileUnlinked) fs.Close(Fds[f]);
                fs.Unlink(B(f));
                if (openWhileUnlinked) fs.Close(Fds[f]);
                Fds.Remove(f);
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
            finally { Tools.Umount(dir); }
        }
        finally { Directory.Delete(dir); }
    }
}
