using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// Marking clusters and inodes used/free inside metadata handles: bitmaps, checksums, descriptor
/// counts and flags, superblock counts. e2fsck is the oracle: blocks we mark used without an owner
/// are exactly the "bitmap differences" it reports, and unmarking them leaves the image clean.
/// </summary>
public partial class GroupAccountingTests
{
    [GeneratedRegex(@"Block bitmap differences:\s+(.*)")]
    private static partial Regex BlockDifferences();

    [GeneratedRegex(@"Inode bitmap differences:\s+(.*)")]
    private static partial Regex InodeDifferences();

    private static string MakeImage(string mkfsArgs, int sizeMiB)
    {
        var image = Path.Combine(Path.GetTempPath(), $"untorn-acct-{Guid.NewGuid():N}.img");
        using (var f = File.Create(image)) f.SetLength((long)sizeMiB << 20);
        var (rc, output) = Tools.Run(Tools.RequireTool("mke2fs"), ["-q", "-F", .. mkfsArgs.Split(' '), image]);
        Assert.True(rc == 0, output);
        return image;
    }

    private static (int Rc, string Output) Fsck(string image) => Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", image]);

    /// <summary>Free clusters of a group, in order, from our own bitmap (only used to pick targets).</summary>
    private static List<uint> FreeClusters(Ext4Fs fs, uint g)
    {
        var bitmap = fs.BlockBitmaps.Read(g);
        var free = new List<uint>();
        for (uint c = 0; c < fs.BlockBitmaps.ClustersInGroup(g); c++)
            if ((bitmap[c >> 3] & (1 << (int)(c & 7))) == 0) free.Add(c);
        return free;
    }

    [Theory]
    [InlineData("-t ext4 -b 4096", 1024)]
    [InlineData("-t ext4 -b 1024", 200)]
    [InlineData("-t ext4 -b 4096 -O ^64bit,^metadata_csum,uninit_bg", 600)]
    [InlineData("-t ext4 -b 4096 -O ^metadata_csum,^uninit_bg", 600)]
    [InlineData("-t ext4 -b 4096 -O bigalloc -C 65536 -N 16384", 8193)]
    [InlineData("-t ext4 -b 4096 -O meta_bg,^resize_inode", 1100)]
    public void MarkClusters_UsedThenFree_FsckSeesExactlyThoseThenClean(string mkfsArgs, int sizeMiB)
    {
        var image = MakeImage(mkfsArgs, sizeMiB);
        try
        {
            var marked = new SortedSet<ulong>(); // first block of each marked cluster
            var targets = new List<(uint G, uint First, uint Count)>();
            uint ratio;
            using (var fs = Ext4Fs.Open(image))
            {
                ratio = (uint)(fs.Super.ClusterSize / fs.Super.BlockSize);
                var tm = new TransactionManager(fs.Cache, new InPlaceCommitWriter(fs.Cache.Inner, fs.Super.BlockSize));
                var rng = new Random(mkfsArgs.Length);
                uint last = fs.Super.GroupCount - 1;
                foreach (uint g in new[] { 0u, Math.Min(1u, last), last, (uint)rng.Next((int)last + 1) }.Distinct())
                {
                    var free = FreeClusters(fs, g);
                    if (free.Count < 8) continue;
                    int at = rng.Next(free.Count - 8);
                    uint first = free[at], count = 1;
                    while (count < 5 && at + (int)count < free.Count && free[at + (int)count] == first + count) count++;
                    targets.Add((g, first, count));
                }
                using (var h = tm.Start())
                {
                    foreach (var (g, first, count) in targets)
                    {
                        fs.BlockBitmaps.Mark(h, g, first, count, used: true);
                        for (uint c = first; c < first + count; c++)
                            marked.Add(fs.Groups.GroupFirstBlock(g) + (ulong)c * ratio);
                    }
                    Superblock.AddFreeCounts(h, fs.Super.BlockSize, -(long)marked.Count * ratio, 0);
                    h.Complete();
                }
                tm.Commit();
            }
            Assert.NotEmpty(targets);

            var (rc, output) = Fsck(image);
            Assert.True(rc == 4, $"e2fsck should find the unowned clusters:\n{output}");
            var reported = new SortedSet<ulong>();
            foreach (Match m in BlockDifferences().Matches(output))
                foreach (var item in m.Groups[1].Value.Split(' ', StringSplitOptions.RemoveEmptyEntries))
                {
                    // "-(a--b)" or "-a": blocks marked in the bitmap that nothing owns.
                    Assert.StartsWith("-", item);
                    var range = item.TrimStart('-').Trim('(', ')').Split("--");
                    for (ulong b = ulong.Parse(range[0]); b <= ulong.Parse(range[^1]); b++) reported.Add(b);
                }
            // With bigalloc e2fsck names every block of a cluster; compare first blocks of clusters.
            var reportedClusters = new SortedSet<ulong>(reported.Select(b => b - b % ratio));
            Assert.Equal(marked, reportedClusters);
            Assert.DoesNotContain("checksum", output, StringComparison.OrdinalIgnoreCase);

            using (var fs = Ext4Fs.Open(image))
            {
                var tm = new TransactionManager(fs.Cache, new InPlaceCommitWriter(fs.Cache.Inner, fs.Super.BlockSize));
                using (var h = tm.Start())
                {
                    foreach (var (g, first, count) in targets) fs.BlockBitmaps.Mark(h, g, first, count, used: false);
                    Superblock.AddFreeCounts(h, fs.Super.BlockSize, (long)marked.Count * ratio, 0);
                    h.Complete();
                }
                tm.Commit();
            }
            (rc, output) = Fsck(image);
            Assert.True(rc == 0, $"after freeing again:\n{output}");
        }
        finally { File.Delete(image); }
    }

    [Theory]
    [InlineData("-t ext4 -b 4096", 1024)]
    [InlineData("-t ext4 -b 1024 -O ^metadata_csum,uninit_bg", 200)]
    public void MarkInode_UsedThenFree_FsckSeesItThenClean(string mkfsArgs, int sizeMiB)
    {
        var image = MakeImage(mkfsArgs, sizeMiB);
        try
        {
            uint ino;
            using (var fs = Ext4Fs.Open(image))
            {
                // An inode in the last group, whose table is INODE_UNINIT after mke2fs.
                ino = (fs.Super.GroupCount - 1) * fs.Super.InodesPerGroup + 5;
                var tm = new TransactionManager(fs.Cache, new InPlaceCommitWriter(fs.Cache.Inner, fs.Super.BlockSize));
                using (var h = tm.Start())
                {
                    fs.InodeBitmaps.Mark(h, ino, used: true, isDir: false);
                    Superblock.AddFreeCounts(h, fs.Super.BlockSize, 0, -1);
                    h.Complete();
                }
                tm.Commit();
            }
            var (rc, output) = Fsck(image);
            Assert.True(rc == 4, output);
            Assert.Equal($"-{ino}", InodeDifferences().Match(output).Groups[1].Value.Trim());

            using (var fs = Ext4Fs.Open(image))
            {
                var tm = new TransactionManager(fs.Cache, new InPlaceCommitWriter(fs.Cache.Inner, fs.Super.BlockSize));
                using (var h = tm.Start())
                {
                    fs.InodeBitmaps.Mark(h, ino, used: false, isDir: false);
                    Superblock.AddFreeCounts(h, fs.Super.BlockSize, 0, 1);
                    h.Complete();
                }
                tm.Commit();
            }
            (rc, output) = Fsck(image);
            Assert.True(rc == 0, output);
        }
        finally { File.Delete(image); }
    }

    [Fact]
    public void Mark_AbortedHandle_LeavesImageUnchanged()
    {
        var image = MakeImage("-t ext4 -b 4096", 512);
        try
        {
            var before = System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(image));
            using (var fs = Ext4Fs.Open(image))
            {
                var tm = new TransactionManager(fs.Cache, new InPlaceCommitWriter(fs.Cache.Inner, fs.Super.BlockSize));
                uint g = fs.Super.GroupCount - 1;
                var freeBefore = fs.Group(g).FreeBlocksCount;
                using (var h = tm.Start())
                {
                    fs.BlockBitmaps.Mark(h, g, FreeClusters(fs, g)[0], 1, used: true);
                    Assert.Equal(freeBefore - 1, fs.Group(g).FreeBlocksCount);
                    // a double allocation is refused without changing anything more
                    Assert.Equal(Errno.EUCLEAN, Assert.Throws<Ext4Exception>(() =>
                        fs.BlockBitmaps.Mark(h, g, 0, 1, used: true)).Errno);
                } // no Complete: aborted
                Assert.Equal(freeBefore, fs.Group(g).FreeBlocksCount);
                tm.Commit();
            }
            Assert.Equal(before, System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(image)));
        }
        finally { File.Delete(image); }
    }
}
