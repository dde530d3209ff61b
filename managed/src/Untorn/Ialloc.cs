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
        if (sb.HasMetadataCsum) BlockBitmaps.VerifyChecksum(sb, Checksum(bitmap), gd.InodeBitmapCsum, $"inode bitmap of group {g}");
        return bitmap;
    }

    /// <summary>
    /// The bitmap side of __ext4_new_inode / ext4_free_inode inside a handle: the inode's bit, the
    /// group's free inode and directory counts, INODE_UNINIT cleared, and bg_itable_unused kept
    /// below every inode in use (e2fsck and the kernel skip the table's tail past it).
    /// </summary>
    public void Mark(TransactionManager.Handle h, uint ino, bool used, bool isDir)
    {
        if (ino == 0 || ino > sb.InodesCount) throw Ext4Exception.Corrupted($"inode number {ino} out of range");
        uint g = (ino - 1) / sb.InodesPerGroup, index = (ino - 1) % sb.InodesPerGroup;
        var gd = groups.Get(g);
        var bitmap = Read(g);
        var bits = new BitSpan(bitmap);
        if (bits.Get(index) == used)
            throw Ext4Exception.Corrupted($"inode {ino} is already {(used ? "in use" : "free")}");
        if (used) bits.Set(index);
        else bits.Clear(index);
        h.Dirty(gd.InodeBitmap, bitmap);
        uint csum = sb.HasMetadataCsum ? Checksum(bitmap) : gd.InodeBitmapCsum;
        bool tracksUnused = sb.HasMetadataCsum || sb.HasGdtCsum;
        groups.Update(h, g, d => d with
        {
            FreeInodesCount = used ? d.FreeInodesCount - 1 : d.FreeInodesCount + 1,
            UsedDirsCount = !isDir ? d.UsedDirsCount : used ? d.UsedDirsCount + 1 : d.UsedDirsCount - 1,
            Flags = (ushort)(d.Flags & ~GroupDesc.FlagInodeUninit),
            ItableUnused = used && tracksUnused && index >= sb.InodesPerGroup - d.ItableUnused
                ? sb.InodesPerGroup - index - 1
                : d.ItableUnused,
            InodeBitmapCsum = csum,
        });
    }

    /// <summary>bg_inode_bitmap_csum: crc32c over InodesPerGroup bits.</summary>
    public uint Checksum(ReadOnlySpan<byte> bitmap) =>
        Crc.Crc32c(sb.CsumSeed, bitmap[..(int)(sb.InodesPerGroup / 8)]);

    /// <summary>
    /// Picks and marks a free inode (the find_group_other / find_group_orlov idea, simplified):
    /// files start at their parent's group, directories at the next one so they spread; the first
    /// group with a free inode wins, skipping the reserved inodes below s_first_ino.
    /// </summary>
    public uint Allocate(TransactionManager.Handle h, uint parentIno, bool isDir)
    {
        uint count = sb.GroupCount;
        uint start = ((parentIno - 1) / sb.InodesPerGroup + (isDir ? 1u : 0u)) % count;
        for (uint i = 0; i < count; i++)
        {
            uint g = (start + i) % count;
            if (groups.Get(g).FreeInodesCount == 0) continue;
            var bits = new BitSpan(Read(g));
            for (uint idx = 0; idx < sb.InodesPerGroup; idx++)
            {
                uint ino = g * sb.InodesPerGroup + idx + 1;
                if (ino < sb.FirstIno || bits.Get(idx)) continue;
                Mark(h, ino, used: true, isDir);
                return ino;
            }
        }
        throw new Ext4Exception(Errno.ENOSPC, "no free inode");
    }
}
