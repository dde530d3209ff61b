using System.Buffers.Binary;

namespace Untorn;

/// <summary>
/// When the primary superblock fails its checksum — a torn in-place write, which a 512-byte-sector
/// device can produce — the filesystem is opened from its first backup (group 1, as e2fsck -b
/// would), the journal is replayed, and if the replay did not bring back a valid primary one is
/// rebuilt from the backup with the free counts summed from the group descriptors. A filesystem
/// too small for a backup (one group) that was being written (needs_recovery: the journal holds
/// what the torn write carried) opens from the torn primary itself: a tear at a sector boundary
/// leaves its geometry (the same in the old and new bytes) intact. A clean one stays EUCLEAN.
/// </summary>
internal static class SuperblockBackup
{
    /// <summary>The first valid backup, located with the damaged primary's geometry (a torn write does not change it).</summary>
    public static (Superblock Sb, byte[] Raw)? Find(IBlockDevice dev, ReadOnlySpan<byte> primary)
    {
        var v = new LeView(primary);
        if (v.U16(0x38) != Superblock.Ext4Magic) return null;
        int logBlock = (int)v.U32(0x18);
        uint bpg = v.U32(0x20), firstData = v.U32(0x14);
        if (logBlock > 6 || bpg == 0) return null;
        long bs = 1024L << logBlock;
        var candidates = new List<uint> { 1 };
        if ((v.U32(0x5C) & Features.CompatSparseSuper2) != 0) candidates = [v.U32(0x24C), v.U32(0x250)];
        foreach (uint g in candidates.Where(g => g != 0))
        {
            long offset = ((long)firstData + (long)g * bpg) * bs;
            if (offset + Superblock.Size > dev.Size) continue;
            var raw = new byte[Superblock.Size];
            dev.Read(offset, raw);
            try { return (Superblock.Parse(raw), raw); }
            catch (Ext4Exception) { }
        }
        bool inFlight = (v.U32(0x60) & Features.IncompatRecover) != 0 && (v.U32(0x5C) & Features.CompatHasJournal) != 0;
        if (!inFlight || candidates.Any(g => g != 0 && ((long)firstData + (long)g * bpg) * bs + Superblock.Size <= dev.Size)) return null;
        var own = primary.ToArray();
        Superblock.UpdateChecksum(own);
        try { return (Superblock.Parse(own), own); }
        catch (Ext4Exception) { return null; }
    }

    /// <summary>
    /// The primary as it should be after recovery: the replayed one when it is valid (needs_recovery
    /// cleared), else one rebuilt from the backup. Returns the 1 KiB to write at offset 1024.
    /// </summary>
    public static byte[] FinalPrimary(IBlockDevice dev, byte[]? backupRaw)
    {
        var raw = new byte[Superblock.Size];
        dev.Read(Superblock.Offset, raw);
        try { Superblock.Parse(raw); }
        catch (Ext4Exception) when (backupRaw != null) { raw = Rebuild(dev, backupRaw); }
        uint incompat = BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(0x60)) & ~Features.IncompatRecover;
        BinaryPrimitives.WriteUInt32LittleEndian(raw.AsSpan(0x60), incompat);
        Superblock.UpdateChecksum(raw);
        return raw;
    }

    private static byte[] Rebuild(IBlockDevice dev, byte[] backupRaw)
    {
        var raw = backupRaw.ToArray();
        var sb = Superblock.Parse(raw);
        var (freeBlocks, freeInodes) = new GroupDescTable(dev, sb).FreeSums();
        BinaryPrimitives.WriteUInt32LittleEndian(raw.AsSpan(0xC), (uint)freeBlocks);
        if (sb.Has64Bit) BinaryPrimitives.WriteUInt32LittleEndian(raw.AsSpan(0x158), (uint)(freeBlocks >> 32));
        BinaryPrimitives.WriteUInt32LittleEndian(raw.AsSpan(0x10), freeInodes);
        BinaryPrimitives.WriteUInt16LittleEndian(raw.AsSpan(0x5A), 0); // s_block_group_nr: this is the primary
        return raw;
    }
}
