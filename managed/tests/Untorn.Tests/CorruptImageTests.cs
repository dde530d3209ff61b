using System.Buffers.Binary;
using System.Text;
using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// Damaged images give a clean errno, never a crash: each test damages one structure that debugfs
/// locates for us (not our own code), then checks the exact errno the kernel would report —
/// EINVAL for what stops a mount, EUCLEAN ("structure needs cleaning", EFSCORRUPTED/EFSBADCRC) for
/// what it finds when it reads the damaged structure, ELOOP for symlink loops.
/// </summary>
public partial class CorruptImageTests
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    private static string Debugfs(string image, string command)
    {
        var (rc, output) = Tools.Run(Tools.RequireTool("debugfs"), ["-R", command, image]);
        Assert.True(rc == 0, output);
        return output;
    }

    private static byte[] Load(string config)
    {
        TestImages.Require();
        return File.ReadAllBytes(TestImages.ImagePath(config));
    }

    private static int ErrnoOf(Action action) => Assert.Throws<Ext4Exception>(action).Errno;

    private static Ext4Fs OpenRo(byte[] image) => Ext4Fs.Open(new MemoryBlockDevice(image, readOnly: true), new OpenOptions { ReadOnly = true });

    private static void ReadWhole(Ext4Fs fs, string path)
    {
        int fd = fs.Open(B(path), OpenFlags.RdOnly, 0);
        try
        {
            var buf = new byte[1 << 16];
            for (long off = 0; ; off += buf.Length)
                if (fs.Pread(fd, buf, off) == 0) break;
        }
        finally { fs.Close(fd); }
    }

    [Theory]
    [InlineData(1500)]       // inside the superblock
    [InlineData(8192)]       // past the superblock, inside the descriptor table's block
    [InlineData(50 << 20)]   // half the filesystem gone
    [InlineData((96 << 20) - 4096)] // only the last block missing
    public void Open_TruncatedImage_Einval(int length)
    {
        var image = Load("ext4-4k");
        Assert.Equal(Errno.EINVAL, ErrnoOf(() => OpenRo(image[..length])));
    }

    [Fact]
    public void Open_BadMagic_Einval()
    {
        var image = Load("ext4-4k");
        image[1024 + 0x38] ^= 0xFF;
        Assert.Equal(Errno.EINVAL, ErrnoOf(() => OpenRo(image)));
    }

    [Fact]
    public void Open_FlippedSuperblockChecksumNoBackup_Euclean()
    {
        var image = Load("ext4-4k"); // one block group: no backup superblock to fall back to
        image[1024 + 0x3FC] ^= 0x01;
        Assert.Equal(Errno.EUCLEAN, ErrnoOf(() => OpenRo(image)));
    }

    /// <summary>
    /// A primary superblock that fails its checksum (what a torn in-place write leaves) is read from
    /// group 1's backup, as e2fsck does; a read-write open rewrites a valid primary.
    /// </summary>
    [Fact]
    public void Open_TornPrimarySuperblock_BackupUsedAndPrimaryRepaired()
    {
        var image = Load("ext4-1k");
        image[1024 + 0x10] ^= 0xFF; // free inodes count, in the first sector: the crc no longer matches
        using (var ro = OpenRo(image.ToArray()))
            ro.Statx(AtFlags.Root, B("/hello.txt"), 0, StatxMask.BasicStats);
        var path = Path.Combine(Path.GetTempPath(), $"untorn-torn-sb-{Guid.NewGuid():N}.img");
        try
        {
            File.WriteAllBytes(path, image);
            using (Ext4Fs.Open(path)) { }
            var (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", path]);
            Assert.True(rc == 0, output);
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void Open_FlippedGroupDescriptorByte_Euclean()
    {
        var image = Load("ext4-4k");
        image[4096 + 0x0C] ^= 0x01; // group 0's free blocks count: its crc no longer matches
        Assert.Equal(Errno.EUCLEAN, ErrnoOf(() => OpenRo(image)));
    }

    [GeneratedRegex(@"located at block (\d+), offset 0x([0-9a-f]+)")]
    private static partial Regex Located();

    private static long InodeOffset(string config, string path)
    {
        var m = Located().Match(Debugfs(TestImages.ImagePath(config), $"imap {path}"));
        Assert.True(m.Success);
        using var fs = Ext4Fs.Open(TestImages.ImagePath(config), new OpenOptions { ReadOnly = true });
        return long.Parse(m.Groups[1].Value) * fs.Super.BlockSize + Convert.ToInt64(m.Groups[2].Value, 16);
    }

    [Fact]
    public void Stat_FlippedInodeByte_Euclean()
    {
        var image = Load("ext4-4k");
        long off = InodeOffset("ext4-4k", "/hello.txt");
        image[off + 0x10] ^= 0x40; // mtime
        using var fs = OpenRo(image);
        Assert.Equal(Errno.EUCLEAN, ErrnoOf(() => fs.Statx(AtFlags.Root, B("/hello.txt"), 0, StatxMask.BasicStats)));
        fs.Statx(AtFlags.Root, B("/one-byte"), 0, StatxMask.BasicStats); // the rest of the filesystem still reads
    }

    [Fact]
    public void Read_ExtentPointingOutsideFilesystem_Euclean()
    {
        var image = Load("ext4-4k");
        long off = InodeOffset("ext4-4k", "/size-4097");
        using (var probe = OpenRo(image.ToArray()))
        {
            var raw = image.AsSpan((int)off, probe.Super.InodeSize);
            // i_block holds a depth-0 header and the first extent; its start goes past the last block.
            BinaryPrimitives.WriteUInt32LittleEndian(raw[(0x28 + 12 + 8)..], (uint)probe.Super.BlocksCount + 10);
            Inode.UpdateChecksum(raw, (uint)probe.Statx(AtFlags.Root, B("/size-4097"), 0, StatxMask.BasicStats).Ino, probe.Super);
        }
        using var fs = OpenRo(image);
        Assert.Equal(Errno.EUCLEAN, ErrnoOf(() => ReadWhole(fs, "/size-4097")));
    }

    [GeneratedRegex(@"^\s*1/\s*2\s+\d+/\s*\d+\s+\d+\s*-\s*\d+\s+(\d+)\s+\d+\s*$", RegexOptions.Multiline)]
    private static partial Regex LevelOneNode();

    [GeneratedRegex(@"^\s*0/\s*2\s+\d+/\s*\d+\s+\d+\s*-\s*\d+\s+(\d+)\s+\d+\s*$", RegexOptions.Multiline)]
    private static partial Regex RootChild();

    [Fact]
    public void Read_ExtentIndexPointingToItself_EucleanNotHang()
    {
        var image = Load("ext4-4k");
        // debugfs: the root's child is an index node (level 1 of 2); make its first entry point to itself.
        var dump = Debugfs(TestImages.ImagePath("ext4-4k"), "ex /fragmented");
        ulong indexNode = ulong.Parse(RootChild().Match(dump).Groups[1].Value);
        using (var probe = OpenRo(image.ToArray()))
        {
            int bs = probe.Super.BlockSize;
            var block = image.AsSpan((int)indexNode * bs, bs);
            Assert.Equal(0xF30A, BinaryPrimitives.ReadUInt16LittleEndian(block));
            BinaryPrimitives.WriteUInt32LittleEndian(block[(12 + 4)..], (uint)indexNode);
            BinaryPrimitives.WriteUInt16LittleEndian(block[(12 + 8)..], 0);
            // keep the checksum right so the loop itself is what gets caught
            uint ino = (uint)probe.Statx(AtFlags.Root, B("/fragmented"), 0, StatxMask.BasicStats).Ino;
            int max = BinaryPrimitives.ReadUInt16LittleEndian(block[4..]);
            BinaryPrimitives.WriteUInt32LittleEndian(block[(12 * (max + 1))..],
                Crc.Crc32c(probe.ReadInode(ino).CsumSeed, block[..(12 * (max + 1))]));
        }
        using var fs = OpenRo(image);
        Assert.Equal(Errno.EUCLEAN, ErrnoOf(() => ReadWhole(fs, "/fragmented")));
    }

    [Fact]
    public void Read_FlippedExtentBlockByte_Euclean()
    {
        var image = Load("ext4-4k");
        var dump = Debugfs(TestImages.ImagePath("ext4-4k"), "ex /fragmented");
        ulong leafParent = ulong.Parse(LevelOneNode().Match(dump).Groups[1].Value);
        image[(int)leafParent * 4096 + 12 + 12 + 2] ^= 0x10; // a logical start inside a leaf; the tail crc catches it
        using var fs = OpenRo(image);
        Assert.Equal(Errno.EUCLEAN, ErrnoOf(() => ReadWhole(fs, "/fragmented")));
    }

    private static (byte[] Image, int Bs, uint Ino, ulong Block) FirstDirBlock(string config, string dir)
    {
        var image = Load(config);
        var blocks = Debugfs(TestImages.ImagePath(config), $"blocks {dir}").Split((char[])[' ', '\n'], StringSplitOptions.RemoveEmptyEntries)
            .Where(t => t.All(char.IsAsciiDigit)).Select(ulong.Parse).ToArray();
        using var probe = OpenRo(image.ToArray());
        uint ino = (uint)probe.Statx(AtFlags.Root, B(dir), 0, StatxMask.BasicStats).Ino;
        return (image, probe.Super.BlockSize, ino, blocks[0]);
    }

    [Fact]
    public void Readdir_FlippedDirectoryBlockByte_Euclean()
    {
        var (image, bs, _, block) = FirstDirBlock("ext4-4k", "/small");
        image[(int)block * bs + 30] ^= 0x20; // inside the ".." entry's name area or the next entry
        using var fs = OpenRo(image);
        Assert.Equal(Errno.EUCLEAN, ErrnoOf(() => fs.Statx(AtFlags.Root, B("/small/no-such-name"), 0, StatxMask.BasicStats)));
    }

    [Theory]
    [InlineData(0x7000)] // rec_len past the block end
    [InlineData(8)]      // rec_len below the 12-byte minimum
    [InlineData(13)]     // rec_len not a multiple of 4
    public void Readdir_BadRecLen_Euclean(int recLen)
    {
        foreach (var config in new[] { "ext4-4k", "ext4-no64-nocsum" })
        {
            var (image, bs, ino, block) = FirstDirBlock(config, "/small");
            var span = image.AsSpan((int)block * bs, bs);
            // "." is first (rec_len 12); damage the ".." entry's rec_len.
            BinaryPrimitives.WriteUInt16LittleEndian(span[(12 + 4)..], (ushort)recLen);
            using (var probe = OpenRo(image.ToArray()))
                if (probe.Super.HasMetadataCsum)
                {
                    uint seed = probe.ReadInode(ino).CsumSeed;
                    BinaryPrimitives.WriteUInt32LittleEndian(span[(bs - 4)..], Crc.Crc32c(seed, span[..(bs - 12)]));
                }
            using var fs = OpenRo(image);
            int fd = fs.Open(B("/small"), OpenFlags.RdOnly | OpenFlags.Directory, 0);
            Assert.Equal(Errno.EUCLEAN, ErrnoOf(() => fs.ReadDir(fd, 1000)));
        }
    }

    [Fact]
    public void Open_SymlinkLoop_Eloop()
    {
        using var fs = Ext4Fs.Open(TestImages.ImagePath("ext4-4k"), new OpenOptions { ReadOnly = true });
        Assert.Equal(Errno.ELOOP, ErrnoOf(() => fs.Open(B("/loop-a"), OpenFlags.RdOnly, 0)));
        Assert.Equal(Errno.ELOOP, ErrnoOf(() => fs.Statx(AtFlags.Root, B("/loop-b/x"), 0, StatxMask.BasicStats)));
    }
}
