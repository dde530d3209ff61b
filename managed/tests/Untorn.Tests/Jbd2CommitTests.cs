using System.Buffers.Binary;
using System.Text;
using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// Transactions written to the jbd2 journal and left there, as a crash after the commit record would
/// leave them, are replayed by tools we did not write — e2fsck and (as root) the Linux kernel — into
/// exactly the blocks the same transaction writes in place; logdump parses every block.
/// </summary>
public partial class Jbd2CommitTests
{
    private const string Label = "journaled-label";

    /// <summary>One transaction touching the superblock, a descriptor, bitmaps, an inode, and a free block that starts with the jbd2 magic (escaped in the log).</summary>
    private static List<(long Offset, byte[] Bytes)> RunWorkload(string image, bool journal, bool checkpoint)
    {
        using var fs = Ext4Fs.Open(image);
        ICommitWriter writer;
        Jbd2CommitWriter? jw = null;
        if (journal)
        {
            jw = new Jbd2CommitWriter(fs.Cache.Inner, Jbd2Journal.Open(fs), fs.Super) { CheckpointAfterCommit = checkpoint };
            jw.Open();
            writer = jw;
        }
        else writer = new InPlaceCommitWriter(fs.Cache.Inner, fs.Super.BlockSize);
        var tm = new TransactionManager(fs.Cache, writer);
        var touched = new List<ulong>();
        int bs = fs.Super.BlockSize;
        using (var h = tm.Start())
        {
            // superblock: the volume label
            ulong sbBlock = (ulong)(1024 / bs);
            var sbData = h.GetWriteAccess(sbBlock);
            var raw = sbData.AsSpan(1024 % bs, 1024);
            raw.Slice(0x78, 16).Clear();
            Encoding.ASCII.GetBytes(Label).CopyTo(raw[0x78..]);
            Superblock.UpdateChecksum(raw);
            h.Dirty(sbBlock, sbData);
            touched.Add(sbBlock);
            // an inode: the root's mtime
            var root = InodeBuffer.Load(fs, Ext4Fs.RootIno);
            BinaryPrimitives.WriteUInt32LittleEndian(root.Raw.AsSpan(0x10), 1_500_000_000);
            root.Save(h, fs);
            touched.Add((ulong)(fs.InodeOffset(Ext4Fs.RootIno) / bs));
            // bitmaps and descriptors: take two clusters of the last group and give one back
            uint g = fs.Super.GroupCount - 1;
            var bitmap = fs.BlockBitmaps.Read(g);
            uint free = 0;
            while ((bitmap[free >> 3] & (1 << (int)(free & 7))) != 0) free++;
            fs.BlockBitmaps.Mark(h, g, free, 2, used: true);
            fs.BlockBitmaps.Mark(h, g, free + 1, 1, used: false);
            touched.Add(fs.Group(g).BlockBitmap);
            touched.Add((ulong)(fs.Groups.DescOffset(g) / bs));
            // ...and give the first back too, so the image stays e2fsck-clean
            fs.BlockBitmaps.Mark(h, g, free, 1, used: false);
            // a free data block whose first word is the jbd2 magic: logged escaped, replayed restored
            ulong magicBlock = fs.Groups.GroupFirstBlock(g) + (free + 5) * (ulong)(fs.Super.ClusterSize / bs);
            var m = new byte[bs];
            BinaryPrimitives.WriteUInt32BigEndian(m, Jbd2Format.Magic);
            new Random(3).NextBytes(m.AsSpan(4));
            h.Dirty(magicBlock, m);
            touched.Add(magicBlock);
            h.Complete();
        }
        tm.Commit();
        if (journal && checkpoint) jw!.Close();
        return touched.Distinct().Select(b => ((long)b * bs, Array.Empty<byte>())).ToList();
    }

    private static byte[] ReadAt(string image, long offset, int length)
    {
        using var f = File.OpenRead(image);
        f.Position = offset;
        var b = new byte[length];
        f.ReadExactly(b);
        return b;
    }

    [Theory]
    [InlineData("ext4-4k")]        // 64bit, metadata_csum: csum v3 tags, 64-bit block numbers
    [InlineData("ext4-1k")]        // 1 KiB blocks: the superblock has a block of its own
    [InlineData("ext4-no64-nocsum")] // no checksums, 32-bit tags
    [InlineData("ext3")]
    public void CommittedNotCheckpointed_E2fsckReplay_EqualsInPlaceResult(string config)
    {
        TestImages.Require();
        var reference = TestImages.CopyOf(config);
        var crashed = TestImages.CopyOf(config);
        try
        {
            var touched = RunWorkload(reference, journal: false, checkpoint: true);
            RunWorkload(crashed, journal: true, checkpoint: false);

            var (rc, dump) = Tools.Run(Tools.RequireTool("dumpe2fs"), ["-h", crashed]);
            Assert.Contains("needs_recovery", dump);
            Assert.DoesNotContain(Label, dump); // nothing reached its home location
            var (_, logdump) = Tools.Run(Tools.RequireTool("debugfs"), ["-R", "logdump", crashed]);
            Assert.Matches(@"Found expected sequence \d+, type 1 \(descriptor block\)", logdump);
            Assert.Matches(@"Found expected sequence \d+, type 2 \(commit block\)", logdump);
            Assert.DoesNotContain("checksum", logdump.Replace("journal_checksum", ""), StringComparison.OrdinalIgnoreCase);

            (rc, var output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fy", crashed]);
            Assert.True(rc is 0 or 1, $"e2fsck -fy replay: exit {rc}\n{output}");
            (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", crashed]);
            Assert.True(rc == 0, $"after replay: {output}");
            int bs = new FileInfo(reference).Length > 0 ? BlockSizeOf(reference) : 0;
            foreach (var (offset, _) in touched)
            {
                if (offset < 4096) continue; // the superblock block: e2fsck rewrites its own fields (check time, state)
                Assert.True(ReadAt(reference, offset, bs).AsSpan().SequenceEqual(ReadAt(crashed, offset, bs)),
                    $"{config}: block {offset / bs} differs between the replayed and the in-place image");
            }
            (_, dump) = Tools.Run(Tools.RequireTool("dumpe2fs"), ["-h", crashed]);
            Assert.Contains(Label, dump);
            Assert.DoesNotContain("needs_recovery", dump);
        }
        finally
        {
            File.Delete(reference);
            File.Delete(crashed);
        }
    }

    [Theory]
    [InlineData("ext4-4k")]
    [InlineData("ext4-no64-nocsum")]
    public void CommittedNotCheckpointed_KernelMountReplays(string config)
    {
        TestImages.Require();
        if (Environment.UserName != "root") Assert.Skip("needs root for mount -o loop");
        var crashed = TestImages.CopyOf(config);
        var dir = crashed + ".mnt";
        try
        {
            Directory.CreateDirectory(dir);
            // Probe on the untouched copy: only a machine that cannot loop-mount at all skips.
            var (rc, output) = Tools.Run("mount", ["-o", "loop,ro", crashed, dir]);
            if (rc != 0) Assert.Skip("mount -o loop does not work here: " + output);
            Oracles.Umount(dir);
            RunWorkload(crashed, journal: true, checkpoint: false);
            (rc, output) = Tools.Run("mount", ["-o", "loop", crashed, dir]);
            Assert.True(rc == 0, $"the kernel refused to mount (replay) our journal: {output}\n{Tools.Run("dmesg", []).Output.Split('\n').TakeLast(15).Aggregate("", (a, l) => a + l + "\n")}");
            var mtime = File.GetLastWriteTimeUtc(dir);
            (rc, output) = Oracles.Umount(dir);
            Assert.True(rc == 0, output);
            Assert.Equal(new DateTime(2017, 7, 14, 2, 40, 0, DateTimeKind.Utc), mtime);
            (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", crashed]);
            Assert.True(rc == 0, $"after the kernel's replay: {output}");
            var (_, dump) = Tools.Run(Tools.RequireTool("dumpe2fs"), ["-h", crashed]);
            Assert.Contains(Label, dump);
        }
        finally
        {
            File.Delete(crashed);
            if (Directory.Exists(dir)) Directory.Delete(dir);
        }
    }

    [Fact]
    public void CleanClose_JournalEmptyAndFsckClean()
    {
        TestImages.Require();
        var image = TestImages.CopyOf("ext4-4k");
        try
        {
            RunWorkload(image, journal: true, checkpoint: true);
            var (_, dump) = Tools.Run(Tools.RequireTool("dumpe2fs"), ["-h", image]);
            Assert.DoesNotContain("needs_recovery", dump);
            Assert.Matches(@"Journal start:\s+0\b", dump);
            Assert.Contains(Label, dump);
            Assert.Matches(@"Journal features:.*journal_checksum_v3", dump);
            var (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", image]);
            Assert.True(rc == 0, output);
        }
        finally { File.Delete(image); }
    }

    private static int BlockSizeOf(string image)
    {
        using var fs = Ext4Fs.Open(image, new OpenOptions { ReadOnly = true });
        return fs.Super.BlockSize;
    }
}
