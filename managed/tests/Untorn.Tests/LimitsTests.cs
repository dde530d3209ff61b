using System.Text;

namespace Untorn.Tests;

/// <summary>
/// Regression tests for what the workload found at the edges: the largest file size, running out
/// of space (short writes, blocks freed but not yet committed), O_CREAT on symlinks (with O_EXCL
/// and through a dangling one) and transactions larger than the journal. The expected values are the kernel's (Linux 6.x on a
/// loop-mounted ext4), checked by e2fsck and debugfs after each run.
/// </summary>
public class LimitsTests
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    private static string MakeImage(int blockSize, long bytes)
    {
        var mke2fs = Tools.RequireTool("mke2fs");
        var img = Path.Combine(Path.GetTempPath(), $"untorn-limits-{Guid.NewGuid():N}.img");
        using (var f = File.Create(img)) f.SetLength(bytes);
        var (rc, output) = Tools.Run(mke2fs, ["-q", "-F", "-t", "ext4", "-b", blockSize.ToString(), img]);
        Assert.True(rc == 0, output);
        return img;
    }

    private static void ExpectErrno(int errno, Action call) => Assert.Equal(errno, Assert.Throws<Ext4Exception>(call).Errno);

    [Theory]
    [InlineData(4096)]
    [InlineData(1024)]
    public void Write_AtTheLargestFileSize_EfbigOrCutShortLikeTheKernel(int bs)
    {
        var image = MakeImage(bs, 16 << 20);
        try
        {
            // ext4_max_size for extent files: 2^32 - 1 blocks. On Linux 6.x: truncate to it works,
            // one byte more is EFBIG; pwrite at it is EFBIG; 10 bytes from two before it write 2.
            long max = ((1L << 32) - 1) * bs;
            using (var fs = Ext4Fs.Open(image))
            {
                int fd = fs.Open(B("/f"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
                ExpectErrno(Errno.EFBIG, () => fs.Pwrite(fd, [1], max));
                ExpectErrno(Errno.EFBIG, () => fs.Ftruncate(fd, max + 1));
                ExpectErrno(Errno.EFBIG, () => fs.Fallocate(fd, 0, max - bs, bs + 1));
                fs.Ftruncate(fd, max);
                fs.Ftruncate(fd, 0);
                Assert.Equal(2, fs.Pwrite(fd, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], max - 2));
                Assert.Equal((ulong)max, fs.Statx(fd, [], AtFlags.EmptyPath, StatxMask.BasicStats).Size);
                var tail = new byte[4];
                Assert.Equal(2, fs.Pread(fd, tail, max - 2));
                Assert.Equal([1, 2], tail[..2]);
                fs.Close(fd);
            }
            Oracles.AssertFsckClean(image, $"{bs}-byte blocks");
            // the last block a file can have, and nothing past it
            var e = Assert.Single(Oracles.DebugfsExtents(image, "/f"));
            Assert.Equal(((1UL << 32) - 2, 1UL, false), (e.Logical, e.Length, e.Unwritten));
        }
        finally { File.Delete(image); }
    }

    [Fact]
    public void OpenCreatExcl_OnASymlink_EexistWhereverItPoints()
    {
        TestImages.Require();
        var image = TestImages.CopyOf("ext4-4k");
        try
        {
            using (var fs = Ext4Fs.Open(image))
            {
                foreach (var link in new[] { "/link-dangling", "/loop-a", "/link-fast", "/link-dir" })
                    ExpectErrno(Errno.EEXIST, () => fs.Open(B(link), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, 0x1A4));
                ExpectErrno(Errno.ENOENT, () => fs.Statx(AtFlags.Root, B("/does-not-exist"), 0, StatxMask.BasicStats));
            }
            Oracles.AssertFsckClean(image, "ext4-4k");
        }
        finally { File.Delete(image); }
    }

    [Fact]
    public void OpenCreat_ThroughADanglingSymlink_CreatesWhatItNames()
    {
        TestImages.Require();
        var image = TestImages.CopyOf("ext4-4k");
        try
        {
            using (var fs = Ext4Fs.Open(image))
            {
                fs.Mkdir(B("/d"), 0x1ED);
                fs.Symlink(B("nothere"), B("/d/dl"));
                fs.Symlink(B("d/dl"), B("/chain"));
                // Linux 6.x: open("chain", O_CREAT) creates d/nothere; "link-dangling" names does-not-exist
                int fd = fs.Open(B("/chain"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
                Assert.Equal(3, fs.Pwrite(fd, "abc"u8, 0));
                fs.Close(fd);
                fs.Close(fs.Open(B("/link-dangling"), OpenFlags.WrOnly | OpenFlags.Creat, 0x1A4));
                ExpectErrno(Errno.ELOOP, () => fs.Open(B("/loop-a"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4));
                ExpectErrno(Errno.ELOOP, () => fs.Open(B("/chain"), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.NoFollow, 0x1A4));
            }
            Oracles.AssertFsckClean(image, "ext4-4k");
            var got = Oracles.DebugfsDumpAll(image, ["/d/nothere", "/does-not-exist"]);
            Assert.Equal("abc"u8.ToArray(), got["/d/nothere"].Data ?? []);
            Assert.Equal([], got["/does-not-exist"].Data ?? [1]);
        }
        finally { File.Delete(image); }
    }

    // Writes 1 MiB chunks to /fill until nothing fits; returns the bytes written.
    private static List<byte> Fill(Ext4Fs fs, Random rng, List<long> writes)
    {
        var model = new List<byte>();
        int fd = fs.Open(B("/fill"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
        for (; ; )
        {
            var d = new byte[1 << 20];
            rng.NextBytes(d);
            long n;
            try { n = fs.Pwrite(fd, d, model.Count); }
            catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC) { break; }
            writes.Add(n);
            model.AddRange(d.AsSpan(0, (int)n).ToArray());
        }
        fs.Close(fd);
        return model;
    }

    [Fact]
    public void Pwrite_LargerThanTheFreeSpace_ShortWriteThenEnospcAndCleanImage()
    {
        var image = MakeImage(1024, 8 << 20);
        try
        {
            var writes = new List<long>();
            List<byte> model;
            using (var fs = Ext4Fs.Open(image, new OpenOptions { CommitInterval = TimeSpan.Zero }))
            {
                model = Fill(fs, new Random(5), writes);
                // the write that did not fit wrote what did (as generic_perform_write does); the next one had nothing
                Assert.True(writes.Count > 1 && writes[^1] < 1 << 20 && writes[..^1].All(n => n == 1 << 20), string.Join(", ", writes));
                int fd = fs.Open(B("/fill"), OpenFlags.RdWr, 0);
                ExpectErrno(Errno.ENOSPC, () => fs.Pwrite(fd, new byte[1024], model.Count));
                Assert.Equal((ulong)model.Count, fs.Statx(fd, [], AtFlags.EmptyPath, StatxMask.BasicStats).Size);
                fs.Close(fd);
            }
            Oracles.AssertFsckClean(image, "full");
            var dumped = Oracles.DebugfsDumpAll(image, ["/fill"])["/fill"].Data;
            Assert.True(dumped != null && dumped.AsSpan().SequenceEqual(model.ToArray()), "debugfs reads /fill differently");
        }
        finally { File.Delete(image); }
    }

    [Fact]
    public void Enospc_WithFreedBlocksNotYetCommitted_CommitsAndRetriesLikeExt4()
    {
        var image = MakeImage(1024, 8 << 20);
        try
        {
            using (var fs = Ext4Fs.Open(image, new OpenOptions { CommitInterval = TimeSpan.Zero }))
            {
                var filled = Fill(fs, new Random(6), []);
                Assert.True(filled.Count > 4 << 20);
                fs.Unlink(B("/fill")); // freed on disk, allocatable only once this commits
                int fd = fs.Open(B("/a"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
                Assert.Equal(2 << 20, fs.Pwrite(fd, new byte[2 << 20], 0));
                fs.Close(fd);
                fs.Mkdir(B("/d"), 0x1ED);
            }
            Oracles.AssertFsckClean(image, "after the retry");
            Assert.Equal(2UL << 20, Oracles.DebugfsExtents(image, "/a").Aggregate(0UL, (s, e) => s + e.Length) * 1024);
        }
        finally { File.Delete(image); }
    }

    [Fact]
    public void ManyOperationsBetweenCommits_CommitBeforeOutgrowingTheJournal()
    {
        TestImages.Require();
        var image = TestImages.CopyOf("ext4-4k"); // a 1024-block journal
        try
        {
            using (var fs = Ext4Fs.Open(image, new OpenOptions { CommitInterval = TimeSpan.Zero }))
            {
                fs.Mkdir(B("/burst"), 0x1ED);
                for (int i = 0; i < 9000; i++) // ~560 inode-table blocks, bitmaps and directory blocks: more than half the journal
                    fs.Close(fs.Open(B($"/burst/f{i}-{new string('x', i % 60)}"), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, 0x1A4));
            }
            Oracles.AssertFsckClean(image, "9000 creates without a commit in between");
            var (rc, output) = Tools.Run(Tools.RequireTool("debugfs"), ["-R", "ls -p /burst", image]);
            Assert.True(rc == 0, output);
            Assert.Equal(9000 + 2, output.Split('\n').Count(l => l.StartsWith('/')));
        }
        finally { File.Delete(image); }
    }
}
