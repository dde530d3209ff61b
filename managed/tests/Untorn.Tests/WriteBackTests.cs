using System.Buffers.Binary;
using System.Text;

namespace Untorn.Tests;

/// <summary>
/// The serializers the write engine builds on: descriptors, superblock and inodes written back with
/// their checksums. e2fsck -fn, dumpe2fs and debugfs judge every image they touched.
/// </summary>
public class WriteBackTests
{
    private static void AssertFsckClean(string image, string label)
    {
        var (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", image]);
        Assert.True(rc == 0, $"{label}: e2fsck -fn exit {rc}\n{output}");
    }

    [Theory]
    [MemberData(nameof(TestImages.ConfigData), MemberType = typeof(TestImages))]
    public void GroupDescWriteTo_EveryGroup_ReproducesMke2fsBytes(string config)
    {
        TestImages.Require();
        using var fs = Ext4Fs.Open(TestImages.ImagePath(config), new OpenOptions { ReadOnly = true });
        for (uint g = 0; g < fs.Super.GroupCount; g++)
        {
            var raw = new byte[fs.Super.GroupDescSize];
            fs.Device.Read(fs.Groups.DescOffset(g), raw);
            var written = raw.ToArray();
            written.AsSpan(0, Math.Min(0x40, written.Length)).Clear(); // every modeled byte must come from the record
            fs.Group(g).WriteTo(written, fs.Super.Has64Bit);
            BinaryPrimitives.WriteUInt16LittleEndian(written.AsSpan(0x1E), 0);
            fs.Groups.UpdateChecksum(g, written);
            if (!fs.Super.HasMetadataCsum && !fs.Super.HasGdtCsum) BinaryPrimitives.WriteUInt16LittleEndian(written.AsSpan(0x1E), BinaryPrimitives.ReadUInt16LittleEndian(raw.AsSpan(0x1E)));
            // Bytes 0x14..0x18 (exclude bitmap lo) and 0x34..0x38 (exclude bitmap hi, reserved) are not modeled.
            raw.AsSpan(0x14, 4).CopyTo(written.AsSpan(0x14));
            if (written.Length >= 0x40) raw.AsSpan(0x34, 4).CopyTo(written.AsSpan(0x34));
            if (written.Length >= 0x3C) raw.AsSpan(0x3C, 4).CopyTo(written.AsSpan(0x3C));
            Assert.True(raw.AsSpan().SequenceEqual(written), $"{config} group {g}: {Convert.ToHexString(raw)} != {Convert.ToHexString(written)}");
        }
    }

    [Theory]
    [MemberData(nameof(TestImages.ConfigData), MemberType = typeof(TestImages))]
    public void SuperblockUpdateChecksum_AfterLabelEdit_Dumpe2fsAndFsckAgree(string config)
    {
        TestImages.Require();
        var image = TestImages.CopyOf(config);
        try
        {
            var raw = new byte[1024];
            using (var f = File.Open(image, FileMode.Open))
            {
                f.Position = 1024;
                f.ReadExactly(raw);
                raw.AsSpan(0x78, 16).Clear();
                Encoding.ASCII.GetBytes("untorn-wb").CopyTo(raw.AsSpan(0x78));
                Superblock.UpdateChecksum(raw);
                f.Position = 1024;
                f.Write(raw);
            }
            var (rc, output) = Tools.Run(Tools.RequireTool("dumpe2fs"), ["-h", image]);
            Assert.True(rc == 0, output);
            Assert.Matches(@"Filesystem volume name:\s+untorn-wb\n", output);
            AssertFsckClean(image, config);
        }
        finally { File.Delete(image); }
    }

    [Theory]
    [MemberData(nameof(TestImages.ConfigData), MemberType = typeof(TestImages))]
    public void InodeUpdateChecksum_AfterMtimeEdit_DebugfsAndFsckAgree(string config)
    {
        TestImages.Require();
        var image = TestImages.CopyOf(config);
        try
        {
            const uint mtime = 1234567890;
            using (var fs = Ext4Fs.Open(image))
            {
                long off = fs.InodeOffset(Ext4Fs.RootIno);
                var raw = new byte[fs.Super.InodeSize];
                fs.Device.Read(off, raw);
                BinaryPrimitives.WriteUInt32LittleEndian(raw.AsSpan(0x10), mtime);
                if (fs.ReadInode(Ext4Fs.RootIno).Fits(0x8C)) BinaryPrimitives.WriteUInt32LittleEndian(raw.AsSpan(0x88), 0);
                Inode.UpdateChecksum(raw, Ext4Fs.RootIno, fs.Super);
                fs.Device.Write(off, raw);
                fs.Device.Flush();
            }
            var (rc, output) = Tools.Run(Tools.RequireTool("debugfs"), ["-R", "stat <2>", image]);
            Assert.True(rc == 0, output);
            Assert.Matches($@"mtime: 0x{mtime:x8}", output);
            AssertFsckClean(image, config);
        }
        finally { File.Delete(image); }
    }

    /// <summary>
    /// Initializing a BLOCK_UNINIT group the way the kernel does on its first allocation there:
    /// write the implied bitmap, its checksum, clear the flag, re-checksum the descriptor.
    /// </summary>
    [Theory]
    [InlineData("-t ext4 -b 4096", 1024)]
    [InlineData("-t ext4 -b 1024 -O ^metadata_csum,uninit_bg", 300)]
    [InlineData("-t ext4 -b 4096 -O bigalloc -C 65536 -N 16384", 16385)]
    public void InitUninitGroup_WrittenBack_FsckCleanAndSameFreeSpace(string mkfsArgs, int sizeMiB)
    {
        var mke2fs = Tools.RequireTool("mke2fs");
        var image = Path.Combine(Path.GetTempPath(), $"untorn-wb-{Guid.NewGuid():N}.img");
        try
        {
            using (var f = File.Create(image)) f.SetLength((long)sizeMiB << 20);
            var (rc, output) = Tools.Run(mke2fs, ["-q", "-F", .. mkfsArgs.Split(' '), image]);
            Assert.True(rc == 0, output);
            string before = FreeBlocksOf(image);
            int initialized = 0;
            using (var fs = Ext4Fs.Open(image))
            {
                for (uint g = 0; g < fs.Super.GroupCount; g++)
                {
                    var gd = fs.Group(g);
                    if ((gd.Flags & GroupDesc.FlagBlockUninit) == 0) continue;
                    var bitmap = fs.BlockBitmaps.InitUninit(g, gd);
                    fs.Device.Write((long)gd.BlockBitmap * fs.Super.BlockSize, bitmap);
                    var updated = gd with
                    {
                        Flags = (ushort)(gd.Flags & ~GroupDesc.FlagBlockUninit),
                        BlockBitmapCsum = fs.Super.HasMetadataCsum ? fs.BlockBitmaps.Checksum(bitmap) : gd.BlockBitmapCsum,
                    };
                    var raw = new byte[fs.Super.GroupDescSize];
                    fs.Device.Read(fs.Groups.DescOffset(g), raw);
                    updated.WriteTo(raw, fs.Super.Has64Bit);
                    fs.Groups.UpdateChecksum(g, raw);
                    fs.Device.Write(fs.Groups.DescOffset(g), raw);
                    fs.Groups.Invalidate(g);
                    initialized++;
                }
                fs.Device.Flush();
            }
            Assert.True(initialized > 0, "no BLOCK_UNINIT group to initialize");
            AssertFsckClean(image, mkfsArgs);
            var (_, dump) = Tools.Run(Tools.RequireTool("dumpe2fs"), [image]);
            Assert.DoesNotContain("BLOCK_UNINIT", dump);
            Assert.Equal(before, FreeBlocksOf(image));
        }
        finally { File.Delete(image); }
    }

    private static string FreeBlocksOf(string image)
    {
        var (rc, output) = Tools.Run(Tools.RequireTool("dumpe2fs"), [image]);
        Assert.True(rc == 0, output);
        return string.Join('\n', output.Split('\n').Where(l => l.TrimStart().StartsWith("Free blocks:")));
    }
}
