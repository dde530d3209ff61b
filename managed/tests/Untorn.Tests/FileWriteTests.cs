using System.Text;

namespace Untorn.Tests;

/// <summary>
/// The data write path: seeded random pwrites (in place, partial blocks, into holes and unwritten
/// extents, past the end) on files of mkfs-made images, checked against an in-test model by tools
/// we did not write — debugfs dumps every file, e2fsck -fn checks the extents, bitmaps and
/// counts, and as root the kernel reads the files back through a loop mount.
/// </summary>
public class FileWriteTests
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    private static readonly string[] Files = ["/size-4097", "/sparse", "/multi-mib", "/fragmented", "/empty", "/one-byte", "/random-size"];

    [Theory]
    [InlineData("ext4-4k", 1)]
    [InlineData("ext4-1k", 2)]
    [InlineData("ext4-no64-nocsum", 3)]
    [InlineData("ext4-metabg", 4)]
    [InlineData("ext4-128inode", 5)]
    [InlineData("ext4-bigalloc", 6)] // mke2fs -d's bigalloc layout (1K blocks, 16K clusters) written over
    public void RandomPwrites_DebugfsKernelAndFsckAgreeWithModel(string config, int seed)
    {
        TestImages.Require();
        var defects = TestImages.MkfsDefects(config);
        var files = Files.Where(f => !defects.Contains(f)).ToArray();
        var model = files.ToDictionary(f => f, f => File.ReadAllBytes(TestImages.Tree + f).ToList());
        var image = TestImages.CopyOf(config);
        try
        {
            var rng = new Random(seed);
            using (var fs = Ext4Fs.Open(image))
            {
                var fds = files.ToDictionary(f => f, f => fs.Open(B(f), OpenFlags.RdWr, 0));
                for (int step = 0; step < 300; step++)
                {
                    var f = files[rng.Next(files.Length)];
                    var m = model[f];
                    long off = rng.Next(5) == 0 ? m.Count + rng.Next(70000) : rng.Next(Math.Max(1, m.Count));
                    var data = new byte[rng.Next(1, rng.Next(3) == 0 ? 200_000 : 9000)];
                    rng.NextBytes(data);
                    Assert.Equal(data.Length, fs.Pwrite(fds[f], data, off));
                    while (m.Count < off) m.Add(0);
                    for (int i = 0; i < data.Length; i++)
                        if (off + i < m.Count) m[(int)off + i] = data[i];
                        else m.Add(data[i]);
                    if (step % 37 == 0) fs.Fsync(fds[f]);
                    if (step % 50 == 0) // the engine's own view, between commits too
                    {
                        var back = new byte[m.Count];
                        Assert.Equal(m.Count, fs.Pread(fds[f], back, 0));
                        Assert.True(back.AsSpan().SequenceEqual(m.ToArray()), $"{config} step {step} {f}: read back differs");
                    }
                }
            }

            var (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", image]);
            Assert.True(rc == 0, $"{config} seed {seed}: e2fsck -fn exit {rc}\n{output}");
            foreach (var f in files)
            {
                var dumped = Path.Combine(Path.GetTempPath(), $"untorn-dump-{Guid.NewGuid():N}");
                try
                {
                    (rc, output) = Tools.Run(Tools.RequireTool("debugfs"), ["-R", $"dump {f} {dumped}", image]);
                    Assert.True(rc == 0, output);
                    Assert.True(File.ReadAllBytes(dumped).AsSpan().SequenceEqual(model[f].ToArray()), $"{config} seed {seed}: debugfs dump of {f} differs from the model");
                }
                finally { File.Delete(dumped); }
            }
            KernelReadsModel(image, model, config);
        }
        finally { File.Delete(image); }
    }

    private static void KernelReadsModel(string image, Dictionary<string, List<byte>> model, string config)
    {
        using var mount = Oracles.LoopMount.TryMount(image, readOnly: true, out var reason);
        if (mount == null)
        {
            Oracles.Note($"{config}: the kernel's reads not checked ({reason}); debugfs above is the oracle");
            return;
        }
        foreach (var (f, m) in model)
            Assert.True(File.ReadAllBytes(mount.Dir + f).AsSpan().SequenceEqual(m.ToArray()), $"{config}: the kernel reads {f} differently");
    }

    [Theory]
    [InlineData("ext3", "/size-4097")]       // indirect-mapped
    [InlineData("ext4-inline", "/hello.txt")] // inline data
    public void Pwrite_UnsupportedLayouts_EopnotsuppAndImageUnchanged(string config, string path)
    {
        TestImages.Require();
        var image = TestImages.CopyOf(config);
        try
        {
            var before = System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(image));
            using (var fs = Ext4Fs.Open(image))
            {
                int fd = fs.Open(B(path), OpenFlags.RdWr, 0);
                Assert.Equal(Errno.EOPNOTSUPP, Assert.Throws<Ext4Exception>(() => fs.Pwrite(fd, [1, 2, 3], 0)).Errno);
            }
            Assert.Equal(before, System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(image)));
        }
        finally { File.Delete(image); }
    }

    [Fact]
    public void Pwrite_Errors()
    {
        TestImages.Require();
        var image = TestImages.CopyOf("ext4-4k");
        try
        {
            using var fs = Ext4Fs.Open(image);
            int ro = fs.Open(B("/size-4097"), OpenFlags.RdOnly, 0);
            Assert.Equal(Errno.EBADF, Assert.Throws<Ext4Exception>(() => fs.Pwrite(ro, [1], 0)).Errno);
            int rw = fs.Open(B("/size-4097"), OpenFlags.RdWr, 0);
            Assert.Equal(Errno.EINVAL, Assert.Throws<Ext4Exception>(() => fs.Pwrite(rw, [1], -5)).Errno);
            Assert.Equal(Errno.EOPNOTSUPP, Assert.Throws<Ext4Exception>(() => fs.Pwritev2(rw, [new IoSegment(0, new byte[1])], 0, 0x100000)).Errno);
            Assert.Equal(Errno.EINVAL, Assert.Throws<Ext4Exception>(() => fs.Pwritev2(rw, [new IoSegment(0, new byte[1])], 0, RwfFlags.Append | RwfFlags.NoAppend)).Errno);
            Assert.Equal(0, fs.Pwrite(rw, [], 0));
            int dir = fs.Open(B("/small"), OpenFlags.RdOnly, 0);
            Assert.Equal(Errno.EBADF, Assert.Throws<Ext4Exception>(() => fs.Pwrite(dir, [1], 0)).Errno);
        }
        finally { File.Delete(image); }
    }
}
