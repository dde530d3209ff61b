using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// Journal recovery at open against the tools that already do it: logs we wrote and logs the Linux
/// kernel left behind (shut down mid-flight) are replayed by untorn and by e2fsck -fy on twin
/// copies, and the two images must be identical outside the superblocks; a torn last commit is
/// not replayed by either; a read-only open replays into memory only.
/// </summary>
public partial class Jbd2RecoveryTests
{
    /// <summary>k transactions, each relabelling the filesystem and touching the root inode, left in the log.</summary>
    internal static void WriteLog(string image, int transactions)
    {
        using var fs = Ext4Fs.Open(image);
        var jw = new Jbd2CommitWriter(fs.Cache.Inner, Jbd2Journal.Open(fs), fs.Super) { CheckpointAfterCommit = false };
        jw.Open();
        var tm = new TransactionManager(fs.Cache, jw);
        int bs = fs.Super.BlockSize;
        for (int t = 1; t <= transactions; t++)
        {
            using (var h = tm.Start())
            {
                ulong sbBlock = (ulong)(1024 / bs);
                var data = h.GetWriteAccess(sbBlock);
                var raw = data.AsSpan(1024 % bs, 1024);
                raw.Slice(0x78, 16).Clear();
                Encoding.ASCII.GetBytes($"label-{t}").CopyTo(raw[0x78..]);
                Superblock.UpdateChecksum(raw);
                h.Dirty(sbBlock, data);
                var root = InodeBuffer.Load(fs, Ext4Fs.RootIno);
                BinaryPrimitives.WriteUInt32LittleEndian(root.Raw.AsSpan(0x10), 1_600_000_000u + (uint)t);
                root.Save(h, fs);
                h.Complete();
            }
            tm.Commit();
        }
    }

    private static string Label(string image) =>
        Regex.Match(Tools.Run(Tools.RequireTool("dumpe2fs"), ["-h", image]).Output, @"Filesystem volume name:\s+(\S*)").Groups[1].Value;

    private static void ReplayWithUntorn(string image)
    {
        using var fs = Ext4Fs.Open(image);
        Assert.False(fs.Super.NeedsRecovery);
    }

    private static void ReplayWithE2fsck(string image)
    {
        var (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fy", image]);
        Assert.True(rc is 0 or 1, $"e2fsck -fy: exit {rc}\n{output}");
    }

    /// <summary>Every block equal, except the ones holding superblocks (e2fsck stamps its check time there) and the journal superblock.</summary>
    private static void AssertSameImages(string a, string b, string label)
    {
        int bs;
        ulong journalSb;
        HashSet<ulong> superBlocks = [];
        using (var fs = Ext4Fs.Open(a, new OpenOptions { ReadOnly = true }))
        {
            bs = fs.Super.BlockSize;
            journalSb = Jbd2Journal.Open(fs).Physical(0);
            for (uint g = 0; g < fs.Super.GroupCount; g++)
                if (fs.Super.GroupHasSuper(g)) superBlocks.Add(g == 0 ? (ulong)(1024 / bs) : fs.Groups.GroupFirstBlock(g));
        }
        using var fa = File.OpenRead(a);
        using var fb = File.OpenRead(b);
        var ba = new byte[bs];
        var bb = new byte[bs];
        for (ulong blk = 0; fa.Read(ba) == bs && fb.Read(bb) == bs; blk++)
        {
            if (blk == journalSb || superBlocks.Contains(blk)) continue;
            Assert.True(ba.AsSpan().SequenceEqual(bb), $"{label}: block {blk} differs between untorn's and e2fsck's replay");
        }
        Assert.Equal(Label(a), Label(b));
    }

    [Theory]
    [InlineData("ext4-4k")]
    [InlineData("ext4-1k")]
    [InlineData("ext4-no64-nocsum")]
    public void Open_LogOfOurs_ReplayEqualsE2fsck(string config)
    {
        TestImages.Require();
        var a = TestImages.CopyOf(config);
        var b = a + ".e2fsck";
        try
        {
            WriteLog(a, 5);
            File.Copy(a, b);
            Assert.Equal(5, OpenRecovered(a));
            ReplayWithE2fsck(b);
            Assert.Equal("label-5", Label(a));
            AssertSameImages(a, b, config);
            var (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", a]);
            Assert.True(rc == 0, output);
        }
        finally
        {
            File.Delete(a);
            File.Delete(b);
        }
    }

    private static int OpenRecovered(string image)
    {
        using var fs = Ext4Fs.Open(image);
        return fs.ReplayedTransactions;
    }

    [GeneratedRegex(@"Found expected sequence (\d+), type 2 \(commit block\) at block (\d+)")]
    private static partial Regex CommitAt();

    [Theory]
    [InlineData("ext4-4k")]
    [InlineData("ext4-no64-nocsum")]
    public void Open_TornLastCommit_NotReplayedLikeE2fsck(string config)
    {
        TestImages.Require();
        var a = TestImages.CopyOf(config);
        var b = a + ".e2fsck";
        try
        {
            WriteLog(a, 3);
            // debugfs finds the commit blocks; damage the last one as a torn write would.
            var commits = CommitAt().Matches(Tools.Run(Tools.RequireTool("debugfs"), ["-R", "logdump", a]).Output);
            Assert.Equal(3, commits.Count);
            uint logBlock = uint.Parse(commits[^1].Groups[2].Value);
            ulong phys;
            int bs;
            using (var fs = Ext4Fs.Open(a, new OpenOptions { ReadOnly = true, NoReplay = true }))
            {
                phys = Jbd2Journal.Open(fs).Physical(logBlock);
                bs = fs.Super.BlockSize;
            }
            using (var f = File.Open(a, FileMode.Open))
            {
                // with checksums the commit block's crc fails; without, its header magic is gone
                f.Position = (long)phys * bs + (config == "ext4-4k" ? 0x30 : 0);
                f.WriteByte(0x5A);
            }
            File.Copy(a, b);
            Assert.Equal(2, OpenRecovered(a));
            ReplayWithE2fsck(b);
            Assert.Equal("label-2", Label(a));
            AssertSameImages(a, b, config);
        }
        finally
        {
            File.Delete(a);
            File.Delete(b);
        }
    }

    [Fact]
    public void OpenReadOnly_DirtyImage_ReplaysInMemoryOnlyOrNotAtAll()
    {
        TestImages.Require();
        var a = TestImages.CopyOf("ext4-4k");
        try
        {
            WriteLog(a, 2);
            var before = SHA256.HashData(File.ReadAllBytes(a));
            using (var fs = Ext4Fs.Open(a, new OpenOptions { ReadOnly = true }))
            {
                Assert.Equal(2, fs.ReplayedTransactions);
                Assert.False(fs.JournalNotReplayed);
                Assert.Equal("label-2", fs.Super.VolumeName);
                Assert.Equal(1_600_000_002L, fs.ReadInode(Ext4Fs.RootIno).Mtime.Seconds);
            }
            using (var fs = Ext4Fs.Open(a, new OpenOptions { ReadOnly = true, NoReplay = true }))
            {
                Assert.True(fs.JournalNotReplayed);
                Assert.NotEqual("label-2", fs.Super.VolumeName);
            }
            Assert.Equal(before, SHA256.HashData(File.ReadAllBytes(a)));
        }
        finally { File.Delete(a); }
    }

    /// <summary>
    /// The kernel leaves committed transactions in the log: mount, write, sync, shut the
    /// filesystem down (EXT4_IOC_SHUTDOWN through xfs_io) so nothing is checkpointed, unmount.
    /// </summary>
    [Theory]
    [InlineData("ext4-4k")]
    [InlineData("ext4-1k")]
    [InlineData("ext4-no64-nocsum")]
    public void Open_LogLeftByKernelShutdown_ReplayEqualsE2fsck(string config)
    {
        TestImages.Require();
        if (Environment.UserName != "root") Assert.Skip("needs root for mount -o loop");
        var xfsIo = Tools.Which("xfs_io");
        if (xfsIo == null) Assert.Skip("xfs_io is not installed (apt-get install xfsprogs)");
        var a = TestImages.CopyOf(config);
        var b = a + ".e2fsck";
        var dir = a + ".mnt";
        try
        {
            Directory.CreateDirectory(dir);
            var (rc, output) = Tools.Run("mount", ["-o", "loop", a, dir]);
            if (rc != 0) Assert.Skip("mount -o loop does not work here: " + output);
            try
            {
                Directory.CreateDirectory(Path.Combine(dir, "kernel-dir"));
                for (int i = 0; i < 30; i++) File.WriteAllText(Path.Combine(dir, "kernel-dir", $"f{i}"), new string((char)('a' + i % 26), 100 + i * 97));
                File.Move(Path.Combine(dir, "kernel-dir", "f3"), Path.Combine(dir, "renamed"));
                File.Delete(Path.Combine(dir, "kernel-dir", "f4"));
                File.AppendAllText(Path.Combine(dir, "hello.txt"), "appended by the kernel\n");
                Tools.Run("sync", ["-f", dir]);
                (rc, output) = Tools.Run(xfsIo, ["-x", "-c", "shutdown -f", dir]);
                Assert.True(rc == 0, output);
            }
            finally { Oracles.Umount(dir); }
            Assert.Contains("needs_recovery", Tools.Run(Tools.RequireTool("dumpe2fs"), ["-h", a]).Output);
            File.Copy(a, b);
            Assert.True(OpenRecovered(a) > 0);
            ReplayWithE2fsck(b);
            AssertSameImages(a, b, config);
            (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", a]);
            Assert.True(rc == 0, $"after untorn's replay: {output}");
            using var fs = Ext4Fs.Open(a, new OpenOptions { ReadOnly = true });
            var buf = new byte[8192];
            int fd = fs.Open(Encoding.UTF8.GetBytes("/hello.txt"), OpenFlags.RdOnly, 0);
            int n = fs.Pread(fd, buf, 0);
            Assert.EndsWith("appended by the kernel\n", Encoding.UTF8.GetString(buf, 0, n));
        }
        finally
        {
            File.Delete(a);
            File.Delete(b);
            if (Directory.Exists(dir)) Directory.Delete(dir);
        }
    }
}
