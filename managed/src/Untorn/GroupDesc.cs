using System.Buffers.Binary;
using System.Collections.Concurrent;

namespace Untorn;

/// <summary>One block group descriptor (32 or 64 bytes), with the _lo/_hi halves joined.</summary>
public readonly record struct GroupDesc(
    ulong BlockBitmap, ulong InodeBitmap, ulong InodeTable, uint FreeBlocksCount, uint FreeInodesCount,
    uint UsedDirsCount, ushort Flags, uint ItableUnused, ushort Checksum,
    uint BlockBitmapCsum = 0, uint InodeBitmapCsum = 0)
{
    public const ushort FlagInodeUninit = 0x1, FlagBlockUninit = 0x2, FlagItableZeroed = 0x4;

    public static GroupDesc Parse(ReadOnlySpan<byte> d, bool is64)
    {
        var v = new LeView(d);
        return new GroupDesc(
            v.U32(0x0) | (is64 ? (ulong)v.U32(0x20) << 32 : 0),
            v.U32(0x4) | (is64 ? (ulong)v.U32(0x24) << 32 : 0),
            v.U32(0x8) | (is64 ? (ulong)v.U32(0x28) << 32 : 0),
            v.U16(0xC) | (is64 ? (uint)v.U16(0x2C) << 16 : 0),
            v.U16(0xE) | (is64 ? (uint)v.U16(0x2E) << 16 : 0),
            v.U16(0x10) | (is64 ? (uint)v.U16(0x30) << 16 : 0),
            v.U16(0x12),
            v.U16(0x1C) | (is64 ? (uint)v.U16(0x32) << 16 : 0),
            v.U16(0x1E),
            // Bitmap checksums: low halves in every descriptor, high halves once it is 64 bytes.
            v.U16(0x18) | (d.Length >= 0x3C ? (uint)v.U16(0x38) << 16 : 0),
            v.U16(0x1A) | (d.Length >= 0x3C ? (uint)v.U16(0x3A) << 16 : 0));
    }

    /// <summary>
    /// Writes every field this record holds into a raw descriptor (32 or 64+ bytes), leaving the
    /// bytes it does not model (exclude bitmap, reserved) as they were. Set the checksum afterwards.
    /// </summary>
    public void WriteTo(Span<byte> d, bool is64)
    {
        static void lo32(Span<byte> d, int off, ulong v) => BinaryPrimitives.WriteUInt32LittleEndian(d[off..], (uint)v);
        static void lo16(Span<byte> d, int off, uint v) => BinaryPrimitives.WriteUInt16LittleEndian(d[off..], (ushort)v);
        lo32(d, 0x0, BlockBitmap);
        lo32(d, 0x4, InodeBitmap);
        lo32(d, 0x8, InodeTable);
        lo16(d, 0xC, FreeBlocksCount);
        lo16(d, 0xE, FreeInodesCount);
        lo16(d, 0x10, UsedDirsCount);
        lo16(d, 0x12, Flags);
        lo16(d, 0x18, BlockBitmapCsum);
        lo16(d, 0x1A, InodeBitmapCsum);
        lo16(d, 0x1C, ItableUnused);
        lo16(d, 0x1E, Checksum);
        if (!is64) return;
        lo32(d, 0x20, BlockBitmap >> 32);
        lo32(d, 0x24, InodeBitmap >> 32);
        lo32(d, 0x28, InodeTable >> 32);
        lo16(d, 0x2C, FreeBlocksCount >> 16);
        lo16(d, 0x2E, FreeInodesCount >> 16);
        lo16(d, 0x30, UsedDirsCount >> 16);
        lo16(d, 0x32, ItableUnused >> 16);
        if (d.Length >= 0x3C)
        {
            lo16(d, 0x38, BlockBitmapCsum >> 16);
            lo16(d, 0x3A, InodeBitmapCsum >> 16);
        }
    }
}

/// <summary>
/// The group descriptor table, read lazily one descriptor block at a time (opening a 1 TiB image
/// must not read thousands of blocks), with meta_bg placement and both checksum flavours.
/// </summary>
internal sealed class GroupDescTable(IBlockDevice dev, Superblock sb)
{
    private readonly ConcurrentDictionary<uint, GroupDesc> _cache = new();
    private const int ChecksumOffset = 0x1E;

    public int DescsPerBlock => sb.BlockSize / sb.GroupDescSize;

    public GroupDesc Get(uint group)
    {
        if (group >= sb.GroupCount) throw Ext4Exception.Corrupted($"group {group} out of range");
        return _cache.GetOrAdd(group, Load);
    }

    /// <summary>Where the descriptor block holding group g lives (the primary copy).</summary>
    public ulong DescBlockOf(uint group)
    {
        uint metaGroup = group / (uint)DescsPerBlock;
        // The block holding the primary superblock: 1 with 1 KiB blocks (even when bigalloc makes
        // s_first_data_block 0), else 0. The table follows it.
        ulong superBlock = sb.BlockSize == 1024 ? 1UL : 0UL;
        if (!sb.HasMetaBg || metaGroup < sb.FirstMetaBg)
            return superBlock + 1 + metaGroup;
        // meta_bg: each meta group's descriptors sit in the first block after the superblock
        // backup (if any) of the meta group's first group.
        uint first = metaGroup * (uint)DescsPerBlock;
        ulong skip = sb.GroupHasSuper(first) ? 1UL : 0UL;
        if (metaGroup == 0 && sb.BlockSize == 1024 && sb.FirstDataBlock == 0) skip++;
        return GroupFirstBlock(first) + skip;
    }

    public ulong GroupFirstBlock(uint group) => sb.FirstDataBlock + (ulong)group * sb.BlocksPerGroup;

    private GroupDesc Load(uint group)
    {
        ulong block = DescBlockOf(group);
        if (block >= sb.BlocksCount) throw Ext4Exception.Corrupted($"group descriptor block {block} beyond the filesystem");
        var raw = new byte[sb.GroupDescSize];
        dev.Read(DescOffset(group), raw);
        Verify(group, raw);
        var gd = GroupDesc.Parse(raw, sb.Has64Bit);
        CheckPlacement(group, gd);
        return gd;
    }

    /// <summary>bg_checksum: crc32c (metadata_csum, low 16 bits) or crc16 (gdt_csum) over the descriptor without it; null without either feature.</summary>
    public ushort? ComputeChecksum(uint group, ReadOnlySpan<byte> raw)
    {
        if (sb.HasMetadataCsum)
        {
            uint crc = Crc.Crc32c(sb.CsumSeed, group);
            return (ushort)(Crc.Crc32cSkipping(crc, raw, ChecksumOffset, 2) & 0xFFFF);
        }
        if (!sb.HasGdtCsum) return null;
        Span<byte> g = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(g, group);
        ushort crc16 = Crc.Crc16(0xFFFF, sb.Uuid);
        crc16 = Crc.Crc16(crc16, g);
        crc16 = Crc.Crc16(crc16, raw[..ChecksumOffset]);
        if (raw.Length > ChecksumOffset + 2) crc16 = Crc.Crc16(crc16, raw[(ChecksumOffset + 2)..]);
        return crc16;
    }

    /// <summary>Sets bg_checksum of a raw descriptor after an edit.</summary>
    public void UpdateChecksum(uint group, Span<byte> raw)
    {
        if (ComputeChecksum(group, raw) is { } csum)
            BinaryPrimitives.WriteUInt16LittleEndian(raw[ChecksumOffset..], csum);
    }

    private void Verify(uint group, ReadOnlySpan<byte> raw)
    {
        if (ComputeChecksum(group, raw) is not { } want) return;
        ushort stored = BinaryPrimitives.ReadUInt16LittleEndian(raw[ChecksumOffset..]);
        if (stored != want)
            throw Ext4Exception.BadChecksum($"group descriptor {group} (stored 0x{stored:x4}, computed 0x{want:x4})");
    }

    /// <summary>Byte offset of group g's descriptor (the primary copy).</summary>
    public long DescOffset(uint group) =>
        (long)DescBlockOf(group) * sb.BlockSize + (group % (uint)DescsPerBlock) * sb.GroupDescSize;

    /// <summary>
    /// Changes group g's descriptor inside a metadata handle: the descriptor block is rewritten with
    /// a fresh checksum and the parsed copy kept in step (and dropped again if the handle aborts).
    /// </summary>
    public GroupDesc Update(TransactionManager.Handle h, uint group, Func<GroupDesc, GroupDesc> change)
    {
        var updated = change(Get(group));
        long off = DescOffset(group);
        ulong block = (ulong)(off / sb.BlockSize);
        var data = h.GetWriteAccess(block);
        var raw = data.AsSpan((int)(off % sb.BlockSize), sb.GroupDescSize);
        updated.WriteTo(raw, sb.Has64Bit);
        UpdateChecksum(group, raw);
        h.Dirty(block, data);
        var parsed = GroupDesc.Parse(raw, sb.Has64Bit);
        _cache[group] = parsed;
        h.OnAbort(() => _cache.TryRemove(group, out _));
        return parsed;
    }

    /// <summary>Free blocks (clusters times the cluster ratio) and free inodes summed over every group.</summary>
    public (ulong Blocks, uint Inodes) FreeSums()
    {
        ulong clusters = 0, inodes = 0;
        for (uint g = 0; g < sb.GroupCount; g++)
        {
            var gd = Get(g);
            clusters += gd.FreeBlocksCount;
            inodes += gd.FreeInodesCount;
        }
        return (clusters * (ulong)(sb.ClusterSize / sb.BlockSize), (uint)inodes);
    }

    /// <summary>Forgets a cached descriptor after its on-disk bytes changed.</summary>
    public void Invalidate(uint group) => _cache.TryRemove(group, out _);

    // ext4_check_descriptors: bitmaps and inode table inside the filesystem. With flex_bg they may
    // sit in another group, so only the filesystem bounds are checked.
    private void CheckPlacement(uint group, GroupDesc gd)
    {
        ulong itableBlocks = ((ulong)sb.InodesPerGroup * sb.InodeSize + (ulong)sb.BlockSize - 1) / (ulong)sb.BlockSize;
        if (gd.BlockBitmap < sb.FirstDataBlock || gd.BlockBitmap >= sb.BlocksCount ||
            gd.InodeBitmap < sb.FirstDataBlock || gd.InodeBitmap >= sb.BlocksCount ||
            gd.InodeTable <= sb.FirstDataBlock || gd.InodeTable + itableBlocks > sb.BlocksCount)
            throw Ext4Exception.Corrupted($"group {group} descriptor points outside the filesystem");
    }
}
