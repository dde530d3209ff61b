using System.Buffers.Binary;
using System.Text;

namespace Untorn.Tests;

/// <summary>
/// The read-only consistency checker (Ext4Check) against e2fsck: clean on every fixture image that
/// e2fsck -fn passes, and each kind of damage made on purpose (a bitmap bit, a lost directory
/// entry, a wrong link count, a block claimed twice, a wrong free count) is reported by both.
/// </summary>
public class CheckTests
{
    [Theory]
    [MemberData(nameof(TestImages.ConfigData), MemberType = typeof(TestImages))]
    public void Run_FixtureImage_CleanLikeE2fsck(string config)
    {
        var (code, fsck) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", TestImages.ImagePath(config)]);
        Assert.True(code == 0, $"e2fsck -fn {config}:\n{fsck}");
        using var fs = Ext4Fs.Open(TestImages.ImagePath(config), new OpenOptions { ReadOnly = true });
        var problems = Ext4Check.Run(fs);
        Assert.True(problems.Count == 0, $"{config}: {string.Join("\n", problems)}");
    }

    /// <summary>A copy of a checksum-free fixture image (damage needs no checksum repair), damaged by <paramref name="damage"/>.</summary>
    private static List<string> Damage(Action<Ext4Fs, FileStream> damage)
    {
        var copy = TestImages.CopyOf("ext4-no64-nocsum");
        try
        {
            using (var fs = Ext4Fs.Open(copy, new OpenOptions { ReadOnly = true }))
            {
                Assert.Empty(Ext4Check.Run(fs));
                using var f = new FileStream(copy, FileMode.Open, FileAccess.ReadWrite);
                damage(fs, f);
            }
            List<string> problems;
            using (var fs = Ext4Fs.Open(copy, new OpenOptions { ReadOnly = true })) problems = Ext4Check.Run(fs);
            var (code, fsck) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", copy]);
            Assert.True(code != 0, $"e2fsck -fn found the damage fine:\n{fsck}\nours: {string.Join("\n", problems)}");
            TestContext.Current.SendDiagnosticMessage($"ours: {string.Join(" | ", problems)}");
            return problems;
        }
        finally { File.Delete(copy); }
    }

    private static uint Lookup(Ext4Fs fs, string name) =>
        Dir.LookupLinear(fs, fs.ReadInode(Ext4Fs.RootIno), Encoding.UTF8.GetBytes(name));

    private static void Poke(FileStream f, long offset, ReadOnlySpan<byte> bytes)
    {
        f.Position = offset;
        f.Write(bytes);
    }

    private static byte[] Peek(FileStream f, long offset, int count)
    {
        var b = new byte[count];
        f.Position = offset;
        f.ReadExactly(b);
        return b;
    }

    [Fact]
    public void Run_FreeBlockMarkedUsed_Reported()
    {
        var problems = Damage((fs, f) =>
        {
            uint g = Enumerable.Range(0, (int)fs.Super.GroupCount).Select(i => (uint)i).First(i => fs.Group(i).FreeBlocksCount > 0);
            var gd = fs.Group(g);
            var bitmap = fs.BlockBitmaps.Read(g);
            int free = Enumerable.Range(0, (int)fs.BlockBitmaps.ClustersInGroup(g)).First(i => (bitmap[i >> 3] & (1 << (i & 7))) == 0);
            bitmap[free >> 3] |= (byte)(1 << (free & 7));
            Poke(f, (long)gd.BlockBitmap * fs.Super.BlockSize, bitmap);
        });
        Assert.Contains(problems, p => p.Contains("marked used but unreferenced"));
    }

    [Fact]
    public void Run_DirectoryEntryDropped_LinkCountReported()
    {
        var problems = Damage((fs, f) =>
        {
            var root = fs.ReadInode(Ext4Fs.RootIno);
            var run = BlockMapper.For(fs, root).Map(0, 1);
            long at = (long)run.Physical * fs.Super.BlockSize;
            var block = Peek(f, at, fs.Super.BlockSize);
            // Merge "hello.txt" into the entry before it, as unlink does.
            int prev = -1, pos = 0;
            while (pos < block.Length)
            {
                int rec = BinaryPrimitives.ReadUInt16LittleEndian(block.AsSpan(pos + 4));
                if (Encoding.UTF8.GetString(block, pos + 8, block[pos + 6]) == "hello.txt")
                {
                    int prevRec = BinaryPrimitives.ReadUInt16LittleEndian(block.AsSpan(prev + 4));
                    BinaryPrimitives.WriteUInt16LittleEndian(block.AsSpan(prev + 4), (ushort)(prevRec + rec));
                    Poke(f, at, block);
                    return;
                }
                prev = pos;
                pos += rec;
            }
            Assert.Fail("hello.txt not in the first root block");
        });
        Assert.Contains(problems, p => p.Contains("i_links_count 1, 0 directory entries"));
    }

    [Fact]
    public void Run_LinkCountTooHigh_Reported()
    {
        var problems = Damage((fs, f) =>
        {
            long off = fs.InodeOffset(Lookup(fs, "hello.txt"));
            var links = Peek(f, off + 0x1A, 2);
            BinaryPrimitives.WriteUInt16LittleEndian(links, (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(links) + 1));
            Poke(f, off + 0x1A, links);
        });
        Assert.Contains(problems, p => p.Contains("i_links_count 2, 1 directory entries"));
    }

    [Fact]
    public void Run_BlockReferencedTwice_Reported()
    {
        var problems = Damage((fs, f) =>
        {
            // Point size-4097's first extent at hello.txt's first block.
            var a = fs.ReadInode(Lookup(fs, "hello.txt"));
            var b = fs.ReadInode(Lookup(fs, "size-4097"));
            Assert.True(a.HasExtents && b.HasExtents);
            uint aPhys = BinaryPrimitives.ReadUInt32LittleEndian(a.BlockArray[20..]);
            Poke(f, fs.InodeOffset(b.Number) + Inode.BlockArrayOffset + 20, BitConverter.GetBytes(aPhys));
        });
        Assert.Contains(problems, p => p.Contains("is already in use"));
        Assert.Contains(problems, p => p.Contains("marked used but unreferenced"));
    }

    [Fact]
    public void Run_GroupFreeCountWrong_Reported()
    {
        var problems = Damage((fs, f) =>
        {
            long off = fs.Groups.DescOffset(0);
            var count = Peek(f, off + 0xE, 2);
            BinaryPrimitives.WriteUInt16LittleEndian(count, (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(count) - 1));
            Poke(f, off + 0xE, count);
        });
        Assert.Contains(problems, p => p.Contains("free inodes recorded"));
    }

    [Fact]
    public void Run_EntryFileTypeWrong_Reported()
    {
        var problems = Damage((fs, f) =>
        {
            var root = fs.ReadInode(Ext4Fs.RootIno);
            long at = (long)BlockMapper.For(fs, root).Map(0, 1).Physical * fs.Super.BlockSize;
            var block = Peek(f, at, fs.Super.BlockSize);
            for (int pos = 0; pos < block.Length; pos += BinaryPrimitives.ReadUInt16LittleEndian(block.AsSpan(pos + 4)))
                if (Encoding.UTF8.GetString(block, pos + 8, block[pos + 6]) == "hello.txt") block[pos + 7] = DirFileType.Dir;
            Poke(f, at, block);
        });
        Assert.Contains(problems, p => p.Contains("has file type 2"));
    }
}
