using System.Text;
using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// Revoke records: an extent-tree leaf or directory block logged by one transaction, freed (truncate,
/// rmdir) in a later one and then filled with file data is protected from the replay of its old
/// logged copy only by the freeing transaction's revoke record. The crash image (everything fsynced, never closed) is
/// replayed by e2fsck -fy, by the kernel and by untorn; the file's data must survive all three.
/// </summary>
public partial class Jbd2RecoveryTests
{
    [GeneratedRegex(@"Revoke FS block (\d+)")]
    private static partial Regex RevokeLine();

    [GeneratedRegex(@"FS block (\d+) logged at journal block")]
    private static partial Regex LoggedLine();

    [Theory]
    [InlineData("", "leaf")]                        // 64bit + metadata_csum: 8-byte records, csum v3 block tail
    [InlineData("^64bit,^metadata_csum", "leaf")]   // 4-byte records, no tail
    [InlineData("", "dir")]
    [InlineData("^64bit,^metadata_csum", "dir")]
    public void FreedMetadataReusedForData_CrashReplayedByE2fsckKernelAndUntorn_DataIntact(string features, string freed)
    {
        var dir = Path.Combine(Path.GetTempPath(), $"untorn-revoke-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            var baseImage = Path.Combine(dir, "base.img");
            using (var fh = File.Create(baseImage)) fh.SetLength(8 << 20);
            var mkfs = new List<string> { "-q", "-F", "-t", "ext4", "-b", "1024", "-m", "0" };
            if (features != "") mkfs.AddRange(["-O", features]);
            var (rc, output) = Tools.Run(Tools.RequireTool("mke2fs"), [.. mkfs, baseImage]);
            Assert.True(rc == 0, output);

            var (crashed, data) = CrashAfterReuse(File.ReadAllBytes(baseImage), freed);
            var crashPath = Path.Combine(dir, "crash.img");
            File.WriteAllBytes(crashPath, crashed);

            var byE2fsck = Path.Combine(dir, "e2fsck.img");
            var byUntorn = Path.Combine(dir, "untorn.img");
            File.Copy(crashPath, byE2fsck);
            File.Copy(crashPath, byUntorn);
            // Replay only (-E journal_only): a full -fy also lowers bg_itable_unused after the rmdir's
            // unlinks, which the kernel never does and -fn does not ask for.
            var (rc2, fsck) = Tools.Run(Tools.RequireTool("e2fsck"), ["-y", "-E", "journal_only", byE2fsck]);
            Assert.True(rc2 is 0 or 1, $"e2fsck -E journal_only: exit {rc2}\n{fsck}");
            Assert.Contains("recovering journal", fsck);
            ReplayWithUntorn(byUntorn);
            FileSpaceTests.AssertFsck(byE2fsck, "after e2fsck's replay");
            FileSpaceTests.AssertFsck(byUntorn, "after untorn's replay");
            AssertSameImages(byUntorn, byE2fsck, "revoke");

            Assert.True(FileSpaceTests.Dump(byE2fsck, "/c").AsSpan().SequenceEqual(data), "/c differs after e2fsck's replay");
            Assert.True(FileSpaceTests.Dump(byUntorn, "/c").AsSpan().SequenceEqual(data), "/c differs after untorn's replay");

            // Why: the log holds the freed blocks' old copies and the free's revokes of them (debugfs logdump).
            var log = Tools.Run(Tools.RequireTool("debugfs"), ["-R", "logdump -a", crashPath]).Output;
            var revoked = RevokeLine().Matches(log).Select(m => ulong.Parse(m.Groups[1].Value)).ToHashSet();
            var logged = LoggedLine().Matches(log).Select(m => ulong.Parse(m.Groups[1].Value)).ToHashSet();
            Assert.True(revoked.Count > 0, $"logdump shows no revoke record:\n{log}");
            Assert.True(revoked.IsSubsetOf(logged), $"revoked {string.Join(",", revoked)} were never logged:\n{log}");

            // A freed block now holds /c's data (else the test proves nothing).
            var cBlocks = FileSpaceTests.DebugfsExtents(byE2fsck, "/c").SelectMany(e => Enumerable.Range(0, (int)e.N).Select(i => e.P + (ulong)i)).ToHashSet();
            Assert.True(revoked.Overlaps(cBlocks), $"no revoked block ({string.Join(",", revoked)}) was reused for /c");
            AssertKernelReplayKeeps(crashPath, data); // last: it skips without root
        }
        finally { Directory.Delete(dir, true); }
    }

    // "leaf": /a gets a one-level extent tree (a leaf block logged by its fsync) and is truncated;
    // "dir": /d gets several directory blocks (logged by a sync), is emptied and removed. Either
    // way the freed blocks are revoked; then /c fills every free block, the freed ones included.
    // Returns the device at the last fsync (the log still holds every transaction) and /c's bytes.
    private static (byte[] Crashed, byte[] Data) CrashAfterReuse(byte[] image, string freed)
    {
        var dev = new MemoryBlockDevice(image);
        var fs = Ext4Fs.Open(dev, new OpenOptions { CommitInterval = TimeSpan.Zero });
        int bs = fs.Super.BlockSize;
        if (freed == "leaf")
        {
            int a = fs.Open(Encoding.UTF8.GetBytes("/a"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
            for (int i = 0; i < 12; i++) fs.Pwrite(a, new byte[bs], 2L * i * bs); // holes: 12 extents, more than the inode holds
            fs.Fsync(a);
            fs.Ftruncate(a, 0);
            fs.Fsync(a);
            fs.Close(a);
        }
        else
        {
            fs.Mkdir(Encoding.UTF8.GetBytes("/d"), 0x1ED);
            var names = Enumerable.Range(0, 40).Select(i => $"/d/{new string('n', 60)}{i:D2}").ToList();
            foreach (var n in names) fs.Close(fs.Open(Encoding.UTF8.GetBytes(n), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4));
            fs.Sync();
            foreach (var n in names) fs.Unlink(Encoding.UTF8.GetBytes(n));
            fs.Rmdir(Encoding.UTF8.GetBytes("/d"));
            fs.Sync();
        }
        int c = fs.Open(Encoding.UTF8.GetBytes("/c"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
        var rng = new Random(5);
        var data = new List<byte>();
        var chunk = new byte[16 * bs];
        while (true)
        {
            rng.NextBytes(chunk);
            long n;
            try { n = fs.Pwrite(c, chunk, data.Count); }
            catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC) { break; }
            data.AddRange(chunk.AsSpan(0, (int)n));
            if (n < chunk.Length) break;
        }
        fs.Fsync(c);
        var crashed = image.ToArray(); // power lost here: the close below writes only to the discarded device
        fs.Dispose();
        return (crashed, data.ToArray());
    }

    private static void AssertKernelReplayKeeps(string crashPath, byte[] data)
    {
        if (Environment.UserName != "root") Assert.Skip("needs root for the kernel's replay (mount -o loop)");
        var kernel = crashPath + ".kernel";
        var mnt = crashPath + ".mnt";
        File.Copy(crashPath, kernel);
        Directory.CreateDirectory(mnt);
        var (rc, output) = Tools.Run("mount", ["-o", "loop", kernel, mnt]);
        if (rc != 0) Assert.Skip($"mount -o loop failed: {output.Trim()}");
        try { Assert.True(File.ReadAllBytes(Path.Combine(mnt, "c")).AsSpan().SequenceEqual(data), "/c differs after the kernel's replay"); }
        finally { Tools.Umount(mnt); }
        FileSpaceTests.AssertFsck(kernel, "after the kernel's replay");
    }

    [GeneratedRegex(@"Free blocks found: (\d+) (\d+)")]
    private static partial Regex FreeBlocksFound();

    /// <summary>
    /// The revoke rule at the writer: blocks B and C are logged (T1); B is freed (T2: revoked) and
    /// logged again later (T3), C is freed and logged again in one transaction (T4: the revoke is
    /// cancelled). Replay must leave B with T3's bytes and C with T4's, in untorn and in e2fsck.
    /// </summary>
    [Theory]
    [InlineData("ext4-4k")]
    [InlineData("ext4-no64-nocsum")]
    public void Open_BlockLoggedAgainAfterRevoke_LaterCopyReplayedLikeE2fsck(string config)
    {
        TestImages.Require();
        var a = TestImages.CopyOf(config);
        var b = a + ".e2fsck";
        try
        {
            var found = FreeBlocksFound().Match(Tools.Run(Tools.RequireTool("debugfs"), ["-R", "ffb 2 1000", a]).Output);
            Assert.True(found.Success, "debugfs ffb found no free blocks");
            ulong blockB = ulong.Parse(found.Groups[1].Value), blockC = ulong.Parse(found.Groups[2].Value);
            int bs;
            var expected = new Dictionary<ulong, byte[]>();
            using (var fs = Ext4Fs.Open(a))
            {
                bs = fs.Super.BlockSize;
                var jw = new Jbd2CommitWriter(fs.Cache.Inner, Jbd2Journal.Open(fs), fs.Super) { CheckpointAfterCommit = false };
                jw.Open();
                var tm = new TransactionManager(fs.Cache, jw);
                void Tx(Action<TransactionManager.Handle> body)
                {
                    using (var h = tm.Start()) { body(h); h.Complete(); }
                    tm.Commit();
                }
                byte[] Fill(byte v) => Enumerable.Repeat(v, bs).ToArray();
                Tx(h => { h.Dirty(blockB, Fill(1)); h.Dirty(blockC, Fill(2)); });
                Tx(h => h.Freed(blockB, 1));
                Tx(h => h.Dirty(blockB, expected[blockB] = Fill(3)));
                Tx(h => { h.Freed(blockC, 1); h.Dirty(blockC, expected[blockC] = Fill(4)); });
            } // never closed by the writer: the log keeps all four transactions
            var log = Tools.Run(Tools.RequireTool("debugfs"), ["-R", "logdump -a", a]).Output;
            Assert.Equal([blockB], RevokeLine().Matches(log).Select(m => ulong.Parse(m.Groups[1].Value)).ToArray());
            File.Copy(a, b);
            var (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-y", "-E", "journal_only", b]);
            Assert.True(rc is 0 or 1, output);
            ReplayWithUntorn(a);
            AssertSameImages(a, b, config);
            foreach (var (block, bytes) in expected)
            {
                var got = new byte[bs];
                using var f = File.OpenRead(b);
                f.Seek((long)block * bs, SeekOrigin.Begin);
                f.ReadExactly(got);
                Assert.True(got.AsSpan().SequenceEqual(bytes), $"block {block} after e2fsck's replay is not its last logged copy");
            }
        }
        finally
        {
            File.Delete(a);
            File.Delete(b);
        }
    }
}
