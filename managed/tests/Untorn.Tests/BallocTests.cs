using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// Block bitmaps as the engine reads (or, for BLOCK_UNINIT groups, builds) them, against the free
/// block ranges dumpe2fs prints for every group (libext2fs applies the same uninit rules itself).
/// </summary>
public partial class BallocTests
{
    private sealed record DumpGroup(uint Group, bool BlockUninit, List<(ulong First, ulong Last)> Free, uint FreeCount,
        List<(ulong First, ulong Last)> FreeInodes, uint FreeInodeCount, bool InodeUninit);

    [GeneratedRegex(@"^Group (\d+): \(Blocks (\d+)-(\d+)\)(.*)$")]
    private static partial Regex GroupLine();

    [GeneratedRegex(@"^\s+(\d+) free (?:blocks|clusters), (\d+) free inodes")]
    private static partial Regex FreeCountLine();

    private static List<DumpGroup> Dumpe2fs(string image)
    {
        var (rc, output) = Tools.Run(Tools.RequireTool("dumpe2fs"), [image]);
        Assert.True(rc == 0, output);
        var result = new List<DumpGroup>();
        DumpGroup? current = null;
        foreach (var line in output.Split('\n'))
        {
            if (GroupLine().Match(line) is { Success: true } g)
            {
                current = new DumpGroup(uint.Parse(g.Groups[1].Value), g.Groups[4].Value.Contains("BLOCK_UNINIT"), [], 0,
                    [], 0, g.Groups[4].Value.Contains("INODE_UNINIT"));
                result.Add(current);
            }
            else if (current != null && FreeCountLine().Match(line) is { Success: true } c)
            {
                result[^1] = current = current with { FreeCount = uint.Parse(c.Groups[1].Value), FreeInodeCount = uint.Parse(c.Groups[2].Value) };
            }
            else if (current != null && line.TrimStart().StartsWith("Free blocks:"))
                current.Free.AddRange(Ranges(line));
            else if (current != null && line.TrimStart().StartsWith("Free inodes:"))
                current.FreeInodes.AddRange(Ranges(line));
        }
        return result;
    }

    private static IEnumerable<(ulong, ulong)> Ranges(string line) =>
        line.Split(':', 2)[1].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(r => r.Split('-')).Select(p => (ulong.Parse(p[0]), ulong.Parse(p[^1])));

    [Theory]
    [MemberData(nameof(TestImages.ConfigData), MemberType = typeof(TestImages))]
    public void Read_EveryGroup_FreeClustersEqualDumpe2fs(string config)
    {
        TestImages.Require();
        CompareEveryGroup(TestImages.ImagePath(config), config);
    }

    /// <summary>
    /// Fresh, mostly empty images leave most groups BLOCK_UNINIT, so the bitmap the engine
    /// synthesizes (superblock backups, GDT and reserved GDT, flex_bg metadata placement,
    /// meta_bg descriptor blocks, a short last group) is what gets compared.
    /// </summary>
    [Theory]
    [InlineData("-t ext4 -b 4096", 2048)]
    [InlineData("-t ext4 -b 1024", 300)]
    [InlineData("-t ext4 -b 1024 -O meta_bg,^resize_inode", 300)]
    [InlineData("-t ext4 -b 4096 -O meta_bg,^resize_inode,^flex_bg", 1100)]
    [InlineData("-t ext4 -b 4096 -O ^64bit,^metadata_csum,uninit_bg", 1500)]
    [InlineData("-t ext4 -b 4096 -O bigalloc -C 65536 -N 16384", 16385)]
    [InlineData("-t ext4 -b 1024 -O bigalloc -C 16384", 700)]
    public void Read_UninitGroups_EqualDumpe2fs(string mkfsArgs, int sizeMiB)
    {
        var mke2fs = Tools.RequireTool("mke2fs");
        var image = Path.Combine(Path.GetTempPath(), $"untorn-balloc-{Guid.NewGuid():N}.img");
        try
        {
            using (var f = File.Create(image)) f.SetLength((long)sizeMiB << 20);
            var (rc, output) = Tools.Run(mke2fs, ["-q", "-F", .. mkfsArgs.Split(' '), image]);
            Assert.True(rc == 0, output);
            int uninit = CompareEveryGroup(image, mkfsArgs);
            Assert.True(uninit > 0, $"{mkfsArgs}: expected BLOCK_UNINIT groups to compare");
        }
        finally { File.Delete(image); }
    }

    /// <summary>Compares every group's bitmap with dumpe2fs; returns how many were BLOCK_UNINIT.</summary>
    private static int CompareEveryGroup(string image, string label)
    {
        var dump = Dumpe2fs(image);
        using var fs = Ext4Fs.Open(image, new OpenOptions { ReadOnly = true });
        var sb = fs.Super;
        uint ratio = (uint)(sb.ClusterSize / sb.BlockSize);
        Assert.Equal((int)sb.GroupCount, dump.Count);
        foreach (var d in dump)
        {
            var bitmap = fs.BlockBitmaps.Read(d.Group);
            ulong groupStart = fs.Groups.GroupFirstBlock(d.Group);
            // dumpe2fs prints block numbers; with bigalloc each range starts and ends on a cluster's first block.
            var expected = new bool[fs.BlockBitmaps.ClustersInGroup(d.Group)];
            foreach (var (first, last) in d.Free)
                for (ulong c = (first - groupStart) / ratio; c <= (last - groupStart) / ratio; c++) expected[c] = true;
            for (uint c = 0; c < expected.Length; c++)
            {
                bool free = (bitmap[c >> 3] & (1 << (int)(c & 7))) == 0;
                Assert.True(expected[c] == free,
                    $"{label} group {d.Group}{(d.BlockUninit ? " (BLOCK_UNINIT)" : "")} cluster {c}: dumpe2fs says {(expected[c] ? "free" : "used")}");
            }
            Assert.Equal(d.FreeCount, (uint)expected.Count(x => x));
            CompareInodeBitmap(fs, d, label);
        }
        return dump.Count(d => d.BlockUninit);
    }

    private static void CompareInodeBitmap(Ext4Fs fs, DumpGroup d, string label)
    {
        var bitmap = fs.InodeBitmaps.Read(d.Group);
        uint ipg = fs.Super.InodesPerGroup, firstIno = d.Group * ipg + 1;
        var expected = new bool[ipg];
        foreach (var (first, last) in d.FreeInodes)
            for (ulong ino = first; ino <= last; ino++) expected[ino - firstIno] = true;
        for (uint i = 0; i < ipg; i++)
        {
            bool free = (bitmap[i >> 3] & (1 << (int)(i & 7))) == 0;
            Assert.True(expected[i] == free,
                $"{label} group {d.Group}{(d.InodeUninit ? " (INODE_UNINIT)" : "")} inode {firstIno + i}: dumpe2fs says {(expected[i] ? "free" : "used")}");
        }
        Assert.Equal(d.FreeInodeCount, (uint)expected.Count(x => x));
    }
}
