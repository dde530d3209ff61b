namespace Untorn.Tests;

/// <summary>
/// Journals written by debugfs (journal_open, journal_write with blocks and with revokes,
/// journal_close): a third writer's logs, replayed by untorn and by e2fsck -fy on twins.
/// </summary>
public partial class Jbd2RecoveryTests
{
    [Theory]
    [InlineData("ext4-4k", true)]
    [InlineData("ext4-1k", true)]
    [InlineData("ext4-no64-nocsum", false)]
    public void Open_LogWrittenByDebugfs_ReplayEqualsE2fsck(string config, bool checksums)
    {
        var debugfs = Tools.RequireTool("debugfs");
        var a = TestImages.CopyOf(config);
        var b = a + ".e2fsck";
        var data = a + ".data";
        var script = a + ".debugfs";
        try
        {
            int bs;
            ulong[] free;
            using (var fs = Ext4Fs.Open(a, new OpenOptions { ReadOnly = true }))
            {
                bs = fs.Super.BlockSize;
                uint g = Enumerable.Range(0, (int)fs.Super.GroupCount).Select(i => (uint)i).Last(i => fs.Group(i).FreeBlocksCount > 8);
                var bitmap = fs.BlockBitmaps.Read(g);
                ulong start = fs.Groups.GroupFirstBlock(g);
                free = Enumerable.Range(0, (int)fs.BlockBitmaps.ClustersInGroup(g))
                    .Where(i => (bitmap[i >> 3] & (1 << (i & 7))) == 0).Take(5).Select(i => start + (ulong)i).ToArray();
            }
            var bytes = new byte[2 * bs];
            new Random(config.Length).NextBytes(bytes);
            File.WriteAllBytes(data, bytes);
            // Transaction 1 writes free[0], free[1]; 2 revokes free[0]; 3 writes free[2], free[3]; 4 (free[4]) is never committed.
            File.WriteAllLines(script,
            [
                checksums ? "jo -c" : "jo",
                $"jw -b {free[0]},{free[1]} {data}",
                $"jw -r {free[0]}",
                $"jw -b {free[2]},{free[3]} {data}",
                $"jw -b {free[4]} -c {data}",
                "jc",
            ]);
            var (rc, output) = Tools.Run(debugfs, ["-w", "-f", script, a]);
            Assert.True(rc == 0, output);
            var logdump = Tools.Run(debugfs, ["-R", "logdump", a]).Output;
            Assert.Contains("revoke table", logdump);
            File.Copy(a, b);
            var before = File.ReadAllBytes(a);

            int replayed;
            using (var fs = Ext4Fs.Open(a)) replayed = fs.ReplayedTransactions;
            Assert.Equal(3, replayed);
            ReplayWithE2fsck(b);
            AssertSameImages(a, b, $"{config} debugfs log");
            var (code, fsck) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", a]);
            Assert.True(code == 0, $"e2fsck -fn after untorn's replay:\n{fsck}");

            // The replay did what the log says: revoked and uncommitted blocks untouched, the rest written.
            var after = File.ReadAllBytes(a);
            Span<byte> block(byte[] img, ulong n) => img.AsSpan((int)(n * (ulong)bs), bs);
            Assert.True(block(after, free[0]).SequenceEqual(block(before, free[0])), "revoked block was replayed");
            Assert.True(block(after, free[1]).SequenceEqual(bytes.AsSpan(bs, bs)), "block 2 of transaction 1");
            Assert.True(block(after, free[2]).SequenceEqual(bytes.AsSpan(0, bs)), "block 1 of transaction 3");
            Assert.True(block(after, free[3]).SequenceEqual(bytes.AsSpan(bs, bs)), "block 2 of transaction 3");
            Assert.True(block(after, free[4]).SequenceEqual(block(before, free[4])), "uncommitted transaction was replayed");
        }
        finally
        {
            foreach (var f in new[] { a, b, data, script }) File.Delete(f);
        }
    }
}
