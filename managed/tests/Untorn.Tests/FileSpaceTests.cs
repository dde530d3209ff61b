using System.Text;
using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// truncate, fallocate (reserve, punch, zero) and aligned allocation, with debugfs (extents and
/// contents), e2fsck -fn and, as root, the kernel as oracles.
/// </summary>
public partial class FileSpaceTests
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    /// <summary>Leaf extents as debugfs sees them: (logical block, physical block, length, unwritten).</summary>
    internal static List<(ulong L, ulong P, ulong N, bool U)> DebugfsExtents(string image, string path) =>
        Oracles.DebugfsExtents(image, path).Select(e => (e.Logical, e.Physical, e.Length, e.Unwritten)).ToList();

    internal static byte[] Dump(string image, string path)
    {
        var tmp = Path.Combine(Path.GetTempPath(), $"untorn-fsp-{Guid.NewGuid():N}");
        try
        {
            Tools.Run(Tools.RequireTool("debugfs"), ["-R", $"dump {path} {tmp}", image]);
            return File.ReadAllBytes(tmp);
        }
        finally { File.Delete(tmp); }
    }

    internal static void AssertFsck(string image, string label) => Oracles.AssertFsckClean(image, label);

    [Theory]
    [InlineData("ext4-1k", 16384, 16)]   // groups start at block 1: alignment must be absolute
    [InlineData("ext4-1k", 65536, 4)]
    [InlineData("ext4-4k", 65536, 8)]
    [InlineData("ext4-4k", 1 << 20, 3)]
    [InlineData("ext4-metabg", 8192, 20)]
    public void AllocAligned_NewFile_EveryUnitPhysicallyAlignedPerDebugfs(string config, int align, int units)
    {
        TestImages.Require();
        var image = TestImages.CopyOf(config);
        try
        {
            int bs;
            var data = new byte[align * units];
            new Random(align).NextBytes(data);
            using (var fs = Ext4Fs.Open(image))
            {
                bs = fs.Super.BlockSize;
                int fd = fs.Open(B("/aligned"), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, 0x1A4);
                fs.AllocAligned(fd, 0, data.Length, (uint)align, 0);
                Assert.Equal((ulong)data.Length, fs.Statx(fd, [], AtFlags.EmptyPath, StatxMask.BasicStats).Size);
                var map = fs.Fiemap(fd, 0, data.Length);
                Assert.All(map, e => Assert.Equal(FileExtent.FlagUnwritten, e.Flags & FileExtent.FlagUnwritten));
                // writing the reserved units converts them in place
                fs.Pwrite(fd, data, 0);
                Assert.All(fs.Fiemap(fd, 0, data.Length), e => Assert.Equal(0u, e.Flags & FileExtent.FlagUnwritten));
                // a second call over the same, already aligned range changes nothing
                fs.AllocAligned(fd, 0, data.Length, (uint)align, 1);
                fs.Close(fd);
            }
            AssertFsck(image, config);
            var extents = DebugfsExtents(image, "/aligned");
            ulong unitBlocks = (ulong)(align / bs);
            for (ulong u = 0; u < (ulong)units; u++)
            {
                ulong first = u * unitBlocks;
                var e = extents.Single(x => x.L <= first && first < x.L + x.N);
                ulong phys = e.P + (first - e.L);
                Assert.True(phys * (ulong)bs % (ulong)align == 0, $"{config}: unit {u} at block {phys} is not {align}-byte aligned");
                Assert.True(first + unitBlocks <= e.L + e.N, $"{config}: unit {u} is split across extents");
            }
            Assert.True(Dump(image, "/aligned").AsSpan().SequenceEqual(data));
        }
        finally { File.Delete(image); }
    }

    [Fact]
    public void AllocAligned_RangeMappedUnaligned_EinvalAndNothingChanges()
    {
        TestImages.Require();
        var image = TestImages.CopyOf("ext4-1k");
        try
        {
            using var fs = Ext4Fs.Open(image);
            int fd = fs.Open(B("/f"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
            fs.Pwrite(fd, new byte[1024], 20 * 1024); // one block in the 16K unit [16K, 32K), not aligned as a unit
            var before = fs.Fiemap(fd, 0, 1 << 20);
            Assert.Equal(Errno.EINVAL, Assert.Throws<Ext4Exception>(() => fs.AllocAligned(fd, 0, 64 * 1024, 16384, 0)).Errno);
            Assert.Equal(before, fs.Fiemap(fd, 0, 1 << 20));
            Assert.Equal(Errno.EINVAL, Assert.Throws<Ext4Exception>(() => fs.AllocAligned(fd, 0, 4096, 3000, 0)).Errno);
            Assert.Equal(Errno.EINVAL, Assert.Throws<Ext4Exception>(() => fs.AllocAligned(fd, 512, 16384, 16384, 0)).Errno);
            Assert.Equal(Errno.EINVAL, Assert.Throws<Ext4Exception>(() => fs.AllocAligned(fd, 0, 1L << 30, 1 << 30, 0)).Errno); // larger than a group
        }
        finally { File.Delete(image); }
    }

    [Theory]
    [InlineData("ext4-4k", 1)]
    [InlineData("ext4-1k", 2)]
    [InlineData("ext4-no64-nocsum", 3)]
    [InlineData("ext4-bigalloc", 4)]
    public void TruncateAndFallocate_Random_DebugfsAndKernelAgreeWithModel(string config, int seed)
    {
        TestImages.Require();
        var image = TestImages.CopyOf(config);
        try
        {
            var rng = new Random(seed);
            var model = new List<byte>();
            using (var fs = Ext4Fs.Open(image))
            {
                int fd = fs.Open(B("/space"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
                for (int step = 0; step < 150; step++)
                {
                    int op = rng.Next(5);
                    long off = rng.Next(0, 300_000), len = rng.Next(1, 60_000);
                    if (op == 0)
                    {
                        var d = new byte[len];
                        rng.NextBytes(d);
                        fs.Pwrite(fd, d, off);
                        while (model.Count < off + len) model.Add(0);
                        for (int i = 0; i < len; i++) model[(int)off + i] = d[i];
                    }
                    else if (op == 1)
                    {
                        fs.Ftruncate(fd, off);
                        if (model.Count > off) model.RemoveRange((int)off, model.Count - (int)off);
                        while (model.Count < off) model.Add(0);
                    }
                    else if (op == 2)
                    {
                        bool keep = rng.Next(2) == 0;
                        fs.Fallocate(fd, keep ? FallocFlags.KeepSize : 0, off, len);
                        if (!keep) while (model.Count < off + len) model.Add(0);
                    }
                    else if (op == 3)
                    {
                        fs.Fallocate(fd, FallocFlags.PunchHole | FallocFlags.KeepSize, off, len);
                        for (long i = off; i < Math.Min(off + len, model.Count); i++) model[(int)i] = 0;
                    }
                    else
                    {
                        fs.Fallocate(fd, FallocFlags.ZeroRange, off, len);
                        while (model.Count < off + len) model.Add(0);
                        for (long i = off; i < off + len; i++) model[(int)i] = 0;
                    }
                    var back = new byte[model.Count + 100];
                    int n = fs.Pread(fd, back, 0);
                    Assert.True(n == model.Count && back.AsSpan(0, n).SequenceEqual(model.ToArray()), $"{config} seed {seed} step {step} op {op}: engine reads differ");
                }
                fs.Close(fd);
            }
            AssertFsck(image, $"{config} seed {seed}");
            Assert.True(Dump(image, "/space").AsSpan().SequenceEqual(model.ToArray()), "debugfs reads differently");
            using var m = Oracles.LoopMount.TryMount(image, readOnly: true, out var reason);
            if (m != null) Assert.True(File.ReadAllBytes(m.Dir + "/space").AsSpan().SequenceEqual(model.ToArray()), "the kernel reads differently");
            else Oracles.Note($"{config}: the kernel's reads not checked ({reason})");
        }
        finally { File.Delete(image); }
    }
}
