namespace Untorn;

/// <summary>
/// Block bitmaps (fs/ext4/balloc.c): one bit per cluster of a group. Read from disk with the
/// metadata_csum check, or, for a group still flagged BLOCK_UNINIT, built the way the kernel builds
/// it: the group's superblock backup, descriptor and reserved-GDT blocks, and whichever of the
/// bitmaps and inode table (flex_bg may put them elsewhere) live inside the group are in use.
/// </summary>
internal sealed class BlockBitmaps(IBlockDevice dev, Superblock sb, GroupDescTable groups)
{
    /// <summary>Bits (clusters) that exist in group g; only the last group may be shorter.</summary>
    public uint ClustersInGroup(uint g)
    {
        if (g + 1 < sb.GroupCount) return sb.ClustersPerGroup;
        ulong blocks = sb.BlocksCount - sb.FirstDataBlock - (ulong)g * sb.BlocksPerGroup;
        return (uint)Math.Min(sb.ClustersPerGroup, (blocks + ClusterRatio - 1) / ClusterRatio);
    }

    private uint ClusterRatio => (uint)(sb.ClusterSize / sb.BlockSize);

    /// <summary>The bitmap of group g as one block (bits past ClustersInGroup are set, as on disk).</summary>
    public byte[] Read(uint g)
    {
        var gd = groups.Get(g);
        if ((gd.Flags & GroupDesc.FlagBlockUninit) != 0 && (sb.HasMetadataCsum || sb.HasGdtCsum))
            return InitUninit(g, gd);
        var bitmap = new byte[sb.BlockSize];
        dev.Read((long)gd.BlockBitmap * sb.BlockSize, bitmap);
        if (sb.HasMetadataCsum) VerifyChecksum(sb, Checksum(bitmap), gd.BlockBitmapCsum, $"block bitmap of group {g}");
        return bitmap;
    }

    /// <summary>A bitmap checksum check: 32 bits in 64-byte descriptors, the low 16 in 32-byte ones.</summary>
    internal static void VerifyChecksum(Superblock sb, uint computed, uint stored, string what)
    {
        if (sb.GroupDescSize < 0x3C) computed &= 0xFFFF;
        if (computed != stored)
            throw Ext4Exception.BadChecksum($"{what} (stored 0x{stored:x8}, computed 0x{computed:x8})");
    }

    /// <summary>
    /// The bitmap side of ext4_mb_mark_diskspace_used / ext4_free_blocks: clusters
    /// [first, first + count) of group g become used (or free) inside a handle. A BLOCK_UNINIT
    /// group gets its implied bitmap written first. Allocating a used cluster or freeing a free one
    /// is corruption (EUCLEAN), as the kernel reports it, and changes nothing.
    /// </summary>
    public void Mark(TransactionManager.Handle h, uint g, uint first, uint count, bool used)
    {
        if (count == 0) return;
        if (first + (ulong)count > ClustersInGroup(g))
            throw new ArgumentOutOfRangeException(nameof(count), $"clusters {first}+{count} beyond group {g}");
        var gd = groups.Get(g);
        var bitmap = Read(g);
        var bits = new BitSpan(bitmap);
        for (uint c = first; c < first + count; c++)
            if (bits.Get(c) == used)
                throw Ext4Exception.Corrupted($"group {g} cluster {c} is already {(used ? "in use" : "free")}");
        for (uint c = first; c < first + count; c++)
        {
            if (used) bits.Set(c);
            else bits.Clear(c);
        }
        h.Dirty(gd.BlockBitmap, bitmap);
        uint csum = sb.HasMetadataCsum ? Checksum(bitmap) : gd.BlockBitmapCsum;
        groups.Update(h, g, d => d with
        {
            FreeBlocksCount = used ? d.FreeBlocksCount - count : d.FreeBlocksCount + count,
            Flags = (ushort)(d.Flags & ~GroupDesc.FlagBlockUninit),
            BlockBitmapCsum = csum,
        });
    }

    /// <summary>bg_block_bitmap_csum: crc32c over the bitmap's ClustersPerGroup bits only.</summary>
    public uint Checksum(ReadOnlySpan<byte> bitmap) =>
        Crc.Crc32c(sb.CsumSeed, bitmap[..(int)(sb.ClustersPerGroup / 8)]);

    /// <summary>ext4_init_block_bitmap: the bitmap a BLOCK_UNINIT group implicitly has.</summary>
    public byte[] InitUninit(uint g, GroupDesc gd)
    {
        var bitmap = new byte[sb.BlockSize];
        var bits = new BitSpan(bitmap);
        uint meta = BaseMetaClusters(g);
        for (uint i = 0; i < meta; i++) bits.Set(i);

        ulong start = groups.GroupFirstBlock(g);
        MarkInGroup(bits, start, gd.BlockBitmap, 1);
        MarkInGroup(bits, start, gd.InodeBitmap, 1);
        MarkInGroup(bits, start, gd.InodeTable, InodeTableBlocks);

        for (uint i = ClustersInGroup(g); i < (uint)sb.BlockSize * 8; i++) bits.Set(i);
        return bitmap;
    }

    private void MarkInGroup(BitSpan bits, ulong groupStart, ulong block, ulong count)
    {
        ulong end = groupStart + sb.BlocksPerGroup;
        for (ulong b = Math.Max(block, groupStart); b < Math.Min(block + count, end); b++)
            bits.Set((uint)((b - groupStart) / ClusterRatio));
    }

    private ulong InodeTableBlocks =>
        ((ulong)sb.InodesPerGroup * sb.InodeSize + (ulong)sb.BlockSize - 1) / (ulong)sb.BlockSize;

    /// <summary>
    /// ext4_num_base_meta_clusters: superblock backup + descriptor blocks (+ reserved GDT blocks in
    /// the classic layout) at the start of group g, in clusters.
    /// </summary>
    public uint BaseMetaClusters(uint g)
    {
        uint dpb = (uint)groups.DescsPerBlock;
        uint num = sb.GroupHasSuper(g) ? 1u : 0u;
        if (!sb.HasMetaBg || g < sb.FirstMetaBg * dpb)
        {
            if (num != 0) num += DescBlocksNoMeta() + sb.ReservedGdtBlocks;
        }
        else
        {
            uint rel = g % dpb;
            if (rel == 0 || rel == 1 || rel == dpb - 1) num += 1;
        }
        // With 1 KiB blocks and s_first_data_block 0 (bigalloc), block 0 precedes the superblock.
        if (g == 0 && sb.BlockSize == 1024 && sb.FirstDataBlock == 0) num += 1;
        return (num + ClusterRatio - 1) / ClusterRatio;
    }

    private uint DescBlocksNoMeta() => sb.HasMetaBg
        ? sb.FirstMetaBg
        : (sb.GroupCount + (uint)groups.DescsPerBlock - 1) / (uint)groups.DescsPerBlock;
}

/// <summary>Little-endian bit addressing over a bitmap block (bit i is byte i/8, bit i%8), as ext4 stores it.</summary>
internal readonly ref struct BitSpan(Span<byte> bytes)
{
    private readonly Span<byte> _bytes = bytes;
    public bool Get(uint i) => (_bytes[(int)(i >> 3)] & (1 << (int)(i & 7))) != 0;
    public void Set(uint i) => _bytes[(int)(i >> 3)] |= (byte)(1 << (int)(i & 7));
    public void Clear(uint i) => _bytes[(int)(i >> 3)] &= (byte)~(1 << (int)(i & 7));
    public int Length => _bytes.Length * 8;
}
