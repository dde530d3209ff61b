using System.Text;

namespace Untorn.Tests;

/// <summary>A device wrapper that counts reads, to prove what the engine does not read.</summary>
internal sealed class CountingDevice(IBlockDevice inner) : IBlockDevice
{
    private int _reads;
    public int Reads => Volatile.Read(ref _reads);
    public long Size => inner.Size;
    public bool IsReadOnly => inner.IsReadOnly;
    public int SectorSize => inner.SectorSize;
    public void Read(long offset, Span<byte> buffer) { Interlocked.Increment(ref _reads); inner.Read(offset, buffer); }
    public void Write(long offset, ReadOnlySpan<byte> buffer) => inner.Write(offset, buffer);
    public void Flush() => inner.Flush();
    public void Dispose() => inner.Dispose();
    public void Reset() => Volatile.Write(ref _reads, 0);
}

public class EngineBehaviourTests
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    [Fact]
    public void Open_64GiBImage_ReadsOnlyAFewBlocks()
    {
        var mke2fs = Tools.RequireTool("mke2fs");
        var img = Path.Combine(Path.GetTempPath(), $"untorn-lazy-{Guid.NewGuid():N}.img");
        try
        {
            using (var f = File.Create(img)) f.SetLength(64L << 30);
            var (rc, output) = Tools.Run(mke2fs, ["-q", "-F", "-t", "ext4", img]);
            Assert.True(rc == 0, output);
            var dev = new CountingDevice(new FileBlockDevice(img, readOnly: true));
            using var fs = Ext4Fs.Open(dev, new OpenOptions { ReadOnly = true });
            Assert.Equal(512u, fs.Super.GroupCount);
            // Superblock, the root's group descriptor and the root inode: nothing per group.
            Assert.InRange(dev.Reads, 1, 4);
            dev.Reset();
            fs.Statx(AtFlags.Root, B("/lost+found"), 0, StatxMask.BasicStats);
            Assert.InRange(dev.Reads, 1, 6);
        }
        finally { File.Delete(img); }
    }

    [Fact]
    public void Lookup_InHtreeDirectory_ReadsFewBlocks()
    {
        TestImages.Require();
        var dev = new CountingDevice(new FileBlockDevice(TestImages.ImagePath("ext4-4k"), readOnly: true));
        using var fs = Ext4Fs.Open(dev, new OpenOptions { ReadOnly = true });
        var dir = fs.Statx(AtFlags.Root, B("/bigdir"), 0, StatxMask.BasicStats);
        ulong dirBlocks = dir.Size / (ulong)fs.Super.BlockSize;
        Assert.True(dirBlocks > 30, $"bigdir has only {dirBlocks} blocks");
        var names = Directory.GetFileSystemEntries(Path.Combine(TestImages.Tree, "bigdir")).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray();
        foreach (var name in new[] { names[0], names[names.Length / 2], names[^1] })
        {
            dev.Reset();
            var st = fs.Statx(AtFlags.Root, B("/bigdir/" + name), 0, StatxMask.BasicStats);
            Assert.Equal((ushort)InodeMode.Regular, (ushort)(st.Mode & InodeMode.TypeMask));
            // root inode + root dir block + bigdir inode + dx root + one leaf + target inode,
            // far fewer than the linear scan's one read per directory block.
            Assert.InRange(dev.Reads, 3, 10);
        }
    }

    /// <summary>Every name of the 5,200-entry directory is found through the index (a few reads each), in every config.</summary>
    [Theory]
    [MemberData(nameof(TestImages.ConfigData), MemberType = typeof(TestImages))]
    public void Lookup_EveryNameInHtreeDirectory_FoundWithFewReads(string config)
    {
        TestImages.Require();
        var dev = new CountingDevice(new FileBlockDevice(TestImages.ImagePath(config), readOnly: true));
        using var fs = Ext4Fs.Open(dev, new OpenOptions { ReadOnly = true });
        var bigdir = fs.Statx(AtFlags.Root, B("/bigdir"), 0, StatxMask.BasicStats);
        Assert.True(fs.ReadInode((uint)bigdir.Ino).IsIndexedDir, $"{config}: e2fsck -fyD should have indexed bigdir");
        int dirFd = fs.Open(B("/bigdir"), OpenFlags.RdOnly | OpenFlags.Directory, 0);
        int worst = 0;
        foreach (var name in Directory.GetFileSystemEntries(Path.Combine(TestImages.Tree, "bigdir")).Select(Path.GetFileName))
        {
            dev.Reset();
            var st = fs.Statx(dirFd, B(name!), AtFlags.SymlinkNoFollow, StatxMask.BasicStats);
            Assert.NotEqual(0UL, st.Ino);
            worst = Math.Max(worst, dev.Reads);
        }
        fs.Close(dirFd);
        // dx root + index/leaf blocks + the target inode; a linear scan would read every block.
        Assert.InRange(worst, 1, 8);
    }

    [Fact]
    public void Pread_ManyThreadsOneImage_AllBytesCorrect()
    {
        TestImages.Require();
        using var fs = Ext4Fs.Open(TestImages.ImagePath("ext4-1k"), new OpenOptions { ReadOnly = true });
        string[] names = ["multi-mib", "fragmented", "random-size", "size-65537", "hello.txt"];
        var expected = names.ToDictionary(n => n, n => File.ReadAllBytes(Path.Combine(TestImages.Tree, n)));
        var errors = new System.Collections.Concurrent.ConcurrentBag<string>();
        Parallel.For(0, 64, new ParallelOptions { MaxDegreeOfParallelism = 8 }, i =>
        {
            var name = names[i % names.Length];
            int fd = fs.Open(B("/" + name), OpenFlags.RdOnly, 0);
            var rng = new Random(i);
            for (int k = 0; k < 50; k++)
            {
                var want = expected[name];
                int off = rng.Next(0, want.Length);
                var buf = new byte[rng.Next(1, 20000)];
                int n = fs.Pread(fd, buf, off);
                if (n != Math.Min(buf.Length, want.Length - off) || !want.AsSpan(off, n).SequenceEqual(buf.AsSpan(0, n)))
                    errors.Add($"{name}@{off}+{buf.Length}");
            }
            fs.Close(fd);
        });
        Assert.Empty(errors);
    }

    [Fact]
    public void Open_LoopBlockDevice_ReadsFiles()
    {
        TestImages.Require();
        var losetup = Tools.Which("losetup");
        if (losetup == null || Environment.UserName != "root") Assert.Skip("needs root and losetup to attach a loop device");
        var (rc, output) = Tools.Run(losetup!, ["-f", "--show", "-r", TestImages.ImagePath("ext4-4k")]);
        if (rc != 0) Assert.Skip("losetup failed here: " + output.Trim());
        var loop = output.Trim();
        try
        {
            using var fs = Ext4Fs.Open(loop, new OpenOptions { ReadOnly = true });
            Assert.Equal(new FileInfo(TestImages.ImagePath("ext4-4k")).Length, fs.Device.Size);
            int fd = fs.Open(B("/multi-mib"), OpenFlags.RdOnly, 0);
            var want = File.ReadAllBytes(Path.Combine(TestImages.Tree, "multi-mib"));
            var buf = new byte[want.Length];
            Assert.Equal(want.Length, fs.Pread(fd, buf, 0));
            Assert.True(want.AsSpan().SequenceEqual(buf));
        }
        finally { Tools.Run(losetup!, ["-d", loop]); }
    }

    [Fact]
    public void ReadDir_SmallBatches_ResumeFromCookieWithoutLossOrRepeat()
    {
        TestImages.Require();
        using var fs = Ext4Fs.Open(TestImages.ImagePath("ext4-inline"), new OpenOptions { ReadOnly = true });
        foreach (var dir in new[] { "/small", "/bigdir", "/" })
        {
            int fd = fs.Open(B(dir), OpenFlags.RdOnly | OpenFlags.Directory, 0);
            var names = new List<string>();
            for (List<DirEntry> batch; (batch = fs.ReadDir(fd, 1)).Count > 0;) names.Add(batch[0].NameString);
            Assert.Equal(names.Count, names.Distinct().Count());
            var expected = Directory.GetFileSystemEntries(Path.Combine(TestImages.Tree, dir.TrimStart('/'))).Length + 2 + (dir == "/" ? 1 : 0);
            Assert.Equal(expected, names.Count);
        }
    }
}
