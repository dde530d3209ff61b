namespace Untorn;

/// <summary>
/// Inode bitmaps (fs/ext4/ialloc.c): one bit per inode of a group; an INODE_UNINIT group has none
/// in use. Bits from InodesPerGroup to the end of the block are set, as ext4_mark_bitmap_end does.
/// </summary>
internal sealed class InodeBitmaps(IBlockDevice dev, Superblock sb, GroupDescTable groups)
{
    public byte[] Read(uint g)
    {
        var gd = groups.Get(g);
        var bitmap = new byte[sb.BlockSize];
        if ((gd.Flags & GroupDesc.FlagInodeUninit) != 0 && (sb.HasMetadataCsum || sb.HasGdtCsum))
        {
            var bits = new BitSpan(bitmap);
            for (uint i = sb.InodesPerGroup; i < (uint)sb.BlockSize * 8; i++) bits.Set(i);
            return bitmap;
        }
        dev.Read((long)gd.InodeBitmap * sb.BlockSize, bitmap);
        if (sb.HasMetadataCsum)
        {
            uint want = Checksum(bitmap);
            uint stored = gd.InodeBitmapCsum;
            if (sb.GroupDescSize < 0x3C) want &= 0xFFFF;
            if (want != stored)
                throw Ext4Exception.BadChecksum($"inode bitmap of group {g} (stored 0x{stored:x8}, computed 0x{want:x8})");
        }
        return bitmap;
    }

    /// <summary>bg_inode_bitmap_csum: crc32c over InodesPerGroup bits.</summary>
    public uint Checksum(ReadOnlySpan<byte> bitmap) =>
        Crc.Crc32c(sb.CsumSeed, bitmap[..(int)(sb.InodesPerGroup / 8)]);
}
