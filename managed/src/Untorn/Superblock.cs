using System.Buffers.Binary;

namespace Untorn;

/// <summary>Feature bits of s_feature_compat / s_feature_incompat / s_feature_ro_compat.</summary>
public static class Features
{
    public const uint CompatDirPrealloc = 0x1, CompatImagicInodes = 0x2, CompatHasJournal = 0x4, CompatExtAttr = 0x8,
        CompatResizeInode = 0x10, CompatDirIndex = 0x20, CompatSparseSuper2 = 0x200, CompatFastCommit = 0x400,
        CompatStableInodes = 0x800, CompatOrphanFile = 0x1000;

    public const uint IncompatCompression = 0x1, IncompatFiletype = 0x2, IncompatRecover = 0x4, IncompatJournalDev = 0x8,
        IncompatMetaBg = 0x10, IncompatExtents = 0x40, Incompat64Bit = 0x80, IncompatMmp = 0x100, IncompatFlexBg = 0x200,
        IncompatEaInode = 0x400, IncompatDirData = 0x1000, IncompatCsumSeed = 0x2000, IncompatLargeDir = 0x4000,
        IncompatInlineData = 0x8000, IncompatEncrypt = 0x10000, IncompatCasefold = 0x20000;

    public const uint RoCompatSparseSuper = 0x1, RoCompatLargeFile = 0x2, RoCompatBtreeDir = 0x4, RoCompatHugeFile = 0x8,
        RoCompatGdtCsum = 0x10, RoCompatDirNlink = 0x20, RoCompatExtraIsize = 0x40, RoCompatHasSnapshot = 0x80,
        RoCompatQuota = 0x100, RoCompatBigalloc = 0x200, RoCompatMetadataCsum = 0x400, RoCompatReplica = 0x800,
        RoCompatReadonly = 0x1000, RoCompatProject = 0x2000, RoCompatSharedBlocks = 0x4000, RoCompatVerity = 0x8000,
        RoCompatOrphanPresent = 0x10000;

    /// <summary>INCOMPAT features whose on-disk format the read path understands.</summary>
    public const uint IncompatReadable = IncompatFiletype | IncompatRecover | IncompatMetaBg | IncompatExtents |
        Incompat64Bit | IncompatMmp | IncompatFlexBg | IncompatEaInode | IncompatCsumSeed | IncompatLargeDir |
        IncompatInlineData;

    /// <summary>RO_COMPAT features we know; any other bit means we may read but never write.</summary>
    public const uint RoCompatKnown = RoCompatSparseSuper | RoCompatLargeFile | RoCompatBtreeDir | RoCompatHugeFile |
        RoCompatGdtCsum | RoCompatDirNlink | RoCompatExtraIsize | RoCompatQuota | RoCompatBigalloc |
        RoCompatMetadataCsum | RoCompatProject | RoCompatOrphanPresent;
}

/// <summary>
/// The primary superblock (1024 bytes at byte offset 1024), field for field as the ext4 disk
/// layout document names them, parsed and validated once at open.
/// </summary>
public sealed class Superblock
{
    public const int Offset = 1024, Size = 1024;
    public const ushort Ext4Magic = 0xEF53;
    private const int ChecksumOffset = 0x3FC;

    public uint InodesCount { get; private init; }
    public ulong BlocksCount { get; private init; }
    public ulong FreeBlocksCount { get; private init; }
    public uint FreeInodesCount { get; private init; }
    public uint FirstDataBlock { get; private init; }
    public int LogBlockSize { get; private init; }
    public int LogClusterSize { get; private init; }
    public uint BlocksPerGroup { get; private init; }
    public uint ClustersPerGroup { get; private init; }
    public uint InodesPerGroup { get; private init; }
    public ushort State { get; private init; }
    public uint RevLevel { get; private init; }
    public uint FirstIno { get; private init; }
    public ushort InodeSize { get; private init; }
    public uint FeatureCompat { get; private init; }
    public uint FeatureIncompat { get; private init; }
    public uint FeatureRoCompat { get; private init; }
    public byte[] Uuid { get; private init; } = [];
    public string VolumeName { get; private init; } = "";
    public uint JournalInum { get; private init; }
    public ushort ReservedGdtBlocks { get; private init; }
    public uint[] HashSeed { get; private init; } = [];
    public byte DefHashVersion { get; private init; }
    public ushort DescSize { get; private init; }
    public uint FirstMetaBg { get; private init; }
    public ushort MinExtraIsize { get; private init; }
    public uint Flags { get; private init; }
    public byte LogGroupsPerFlex { get; private init; }
    public byte ChecksumType { get; private init; }
    public uint ChecksumSeed { get; private init; }
    public uint[] BackupBgs { get; private init; } = [];
    public uint Checksum { get; private init; }

    public int BlockSize => 1024 << LogBlockSize;
    public int ClusterSize => 1024 << LogClusterSize;
    public bool Has64Bit => (FeatureIncompat & Features.Incompat64Bit) != 0;
    public bool HasMetadataCsum => (FeatureRoCompat & Features.RoCompatMetadataCsum) != 0;
    public bool HasGdtCsum => (FeatureRoCompat & Features.RoCompatGdtCsum) != 0;
    public bool HasFiletype => (FeatureIncompat & Features.IncompatFiletype) != 0;
    public bool HasBigalloc => (FeatureRoCompat & Features.RoCompatBigalloc) != 0;
    public bool HasHugeFile => (FeatureRoCompat & Features.RoCompatHugeFile) != 0;
    public bool HasMetaBg => (FeatureIncompat & Features.IncompatMetaBg) != 0;
    public bool HasInlineData => (FeatureIncompat & Features.IncompatInlineData) != 0;
    public bool HasDirNlink => (FeatureRoCompat & Features.RoCompatDirNlink) != 0;
    public bool HasLargeDir => (FeatureIncompat & Features.IncompatLargeDir) != 0;
    public bool NeedsRecovery => (FeatureIncompat & Features.IncompatRecover) != 0;
    /// <summary>s_flags bit 0x2: directory hashes use unsigned chars (0x1: signed).</summary>
    public bool UnsignedDirHash => (Flags & 0x2) != 0;
    public int GroupDescSize => Has64Bit ? DescSize : 32;
    public uint GroupCount => (uint)((BlocksCount - FirstDataBlock + BlocksPerGroup - 1) / BlocksPerGroup);

    /// <summary>The seed every metadata_csum checksum starts from.</summary>
    public uint CsumSeed => (FeatureIncompat & Features.IncompatCsumSeed) != 0
        ? ChecksumSeed
        : Crc.Crc32c(~0u, Uuid);

    public static Superblock Parse(ReadOnlySpan<byte> b)
    {
        if (b.Length < Size) throw new Ext4Exception(Errno.EINVAL, "image too small for a superblock");
        ushort magic = BinaryPrimitives.ReadUInt16LittleEndian(b[0x38..]);
        if (magic != Ext4Magic)
            throw new Ext4Exception(Errno.EINVAL, $"not an ext2/3/4 filesystem (magic 0x{magic:x4})");
        var v = new LeView(b);
        bool is64 = (v.U32(0x60) & Features.Incompat64Bit) != 0;
        var sb = new Superblock
        {
            InodesCount = v.U32(0x0),
            BlocksCount = v.U32(0x4) | (is64 ? (ulong)v.U32(0x150) << 32 : 0),
            FreeBlocksCount = v.U32(0xC) | (is64 ? (ulong)v.U32(0x158) << 32 : 0),
            FreeInodesCount = v.U32(0x10),
            FirstDataBlock = v.U32(0x14),
            LogBlockSize = (int)v.U32(0x18),
            LogClusterSize = (int)v.U32(0x1C),
            BlocksPerGroup = v.U32(0x20),
            ClustersPerGroup = v.U32(0x24),
            InodesPerGroup = v.U32(0x28),
            State = v.U16(0x3A),
            RevLevel = v.U32(0x4C),
            FirstIno = v.U32(0x4C) == 0 ? 11 : v.U32(0x54),
            InodeSize = v.U32(0x4C) == 0 ? (ushort)128 : v.U16(0x58),
            FeatureCompat = v.U32(0x5C),
            FeatureIncompat = v.U32(0x60),
            FeatureRoCompat = v.U32(0x64),
            Uuid = b.Slice(0x68, 16).ToArray(),
            VolumeName = System.Text.Encoding.UTF8.GetString(b.Slice(0x78, 16)).TrimEnd('\0'),
            JournalInum = v.U32(0xE0),
            ReservedGdtBlocks = v.U16(0xCE),
            HashSeed = [v.U32(0xEC), v.U32(0xF0), v.U32(0xF4), v.U32(0xF8)],
            DefHashVersion = b[0xFC],
            DescSize = v.U16(0xFE),
            FirstMetaBg = v.U32(0x104),
            MinExtraIsize = v.U16(0x15C),
            Flags = v.U32(0x160),
            LogGroupsPerFlex = b[0x174],
            ChecksumType = b[0x175],
            BackupBgs = [v.U32(0x24C), v.U32(0x250)],
            ChecksumSeed = v.U32(0x270),
            Checksum = v.U32(ChecksumOffset),
        };
        sb.Validate(b);
        return sb;
    }

    /// <summary>
    /// Adds to the free block and free inode counts of the primary superblock inside a handle
    /// (the kernel keeps them in per-cpu counters and writes them with the superblock).
    /// </summary>
    internal static void AddFreeCounts(TransactionManager.Handle h, int blockSize, long blocks, long inodes) =>
        EditFreeCounts(h, blockSize, (b, i) => ((ulong)((long)b + blocks), (uint)(i + inodes)));

    /// <summary>
    /// Sets the superblock's free counts to the group descriptors' sums (in blocks and inodes),
    /// as the kernel's mount does (ext4_count_free_clusters seeds its counters; the superblock
    /// copy is only written at commit, so after a crash it may be stale).
    /// </summary>
    internal static void SetFreeCounts(TransactionManager.Handle h, int blockSize, ulong freeBlocks, uint freeInodes) =>
        EditFreeCounts(h, blockSize, (_, _) => (freeBlocks, freeInodes));

    private static void EditFreeCounts(TransactionManager.Handle h, int blockSize, Func<ulong, uint, (ulong Blocks, uint Inodes)> edit)
    {
        ulong block = (ulong)(Offset / blockSize);
        var data = h.GetWriteAccess(block);
        var raw = data.AsSpan(Offset % blockSize, Size);
        bool is64 = (BinaryPrimitives.ReadUInt32LittleEndian(raw[0x60..]) & Features.Incompat64Bit) != 0;
        ulong free = BinaryPrimitives.ReadUInt32LittleEndian(raw[0xC..]) | (is64 ? (ulong)BinaryPrimitives.ReadUInt32LittleEndian(raw[0x158..]) << 32 : 0);
        var (blocks, inodes) = edit(free, BinaryPrimitives.ReadUInt32LittleEndian(raw[0x10..]));
        BinaryPrimitives.WriteUInt32LittleEndian(raw[0xC..], (uint)blocks);
        if (is64) BinaryPrimitives.WriteUInt32LittleEndian(raw[0x158..], (uint)(blocks >> 32));
        BinaryPrimitives.WriteUInt32LittleEndian(raw[0x10..], inodes);
        UpdateChecksum(raw);
        h.Dirty(block, data);
    }

    /// <summary>Sets s_checksum of a raw 1 KiB superblock whose metadata_csum bit is set (after any edit).</summary>
    public static void UpdateChecksum(Span<byte> raw)
    {
        if ((BinaryPrimitives.ReadUInt32LittleEndian(raw[0x64..]) & Features.RoCompatMetadataCsum) == 0) return;
        BinaryPrimitives.WriteUInt32LittleEndian(raw[ChecksumOffset..], Crc.Crc32c(~0u, raw[..ChecksumOffset]));
    }

    // The same geometry checks the kernel makes in ext4_fill_super, each failure a clear EINVAL/EUCLEAN.
    private void Validate(ReadOnlySpan<byte> raw)
    {
        if (HasMetadataCsum)
        {
            if (ChecksumType != 1) throw Ext4Exception.Corrupted($"unknown checksum type {ChecksumType}");
            uint want = Crc.Crc32c(~0u, raw[..ChecksumOffset]);
            if (want != Checksum) throw Ext4Exception.BadChecksum($"superblock (stored 0x{Checksum:x8}, computed 0x{want:x8})");
        }
        if (LogBlockSize > 6) throw new Ext4Exception(Errno.EINVAL, $"invalid log block size {LogBlockSize}");
        if (HasBigalloc ? LogClusterSize < LogBlockSize || LogClusterSize > LogBlockSize + 16 : LogClusterSize != LogBlockSize)
            throw new Ext4Exception(Errno.EINVAL, $"invalid log cluster size {LogClusterSize}");
        if (BlocksPerGroup == 0 || BlocksPerGroup > 8u * (uint)BlockSize * (uint)(ClusterSize / BlockSize)
            || BlocksPerGroup % 8 != 0)
            throw new Ext4Exception(Errno.EINVAL, $"invalid blocks per group {BlocksPerGroup}");
        if (ClustersPerGroup != BlocksPerGroup / (uint)(ClusterSize / BlockSize))
            throw new Ext4Exception(Errno.EINVAL, $"clusters per group {ClustersPerGroup} does not match blocks per group");
        if (InodesPerGroup == 0 || InodesPerGroup > 8u * (uint)BlockSize)
            throw new Ext4Exception(Errno.EINVAL, $"invalid inodes per group {InodesPerGroup}");
        if (InodeSize < 128 || InodeSize > BlockSize || (InodeSize & (InodeSize - 1)) != 0)
            throw new Ext4Exception(Errno.EINVAL, $"invalid inode size {InodeSize}");
        if (FirstDataBlock != (BlockSize == 1024 && !HasBigalloc ? 1u : 0u) && FirstDataBlock != 0)
            throw new Ext4Exception(Errno.EINVAL, $"invalid first data block {FirstDataBlock}");
        if (BlocksCount <= FirstDataBlock)
            throw new Ext4Exception(Errno.EINVAL, $"block count {BlocksCount} too small");
        if (Has64Bit && (DescSize < 32 || DescSize > 1024 || (DescSize & (DescSize - 1)) != 0))
            throw new Ext4Exception(Errno.EINVAL, $"invalid group descriptor size {DescSize}");
        if ((ulong)GroupCount * InodesPerGroup != InodesCount)
            throw new Ext4Exception(Errno.EINVAL, $"inode count {InodesCount} != groups x inodes per group");
        if (FirstIno < 11 || FirstIno >= InodesCount)
            throw new Ext4Exception(Errno.EINVAL, $"invalid first inode {FirstIno}");
    }

    /// <summary>Whether group g holds a superblock backup (sparse_super / sparse_super2 rules).</summary>
    public bool GroupHasSuper(uint g)
    {
        if (g == 0) return true;
        if ((FeatureCompat & Features.CompatSparseSuper2) != 0) return g == BackupBgs[0] || g == BackupBgs[1];
        if (g <= 1 || (FeatureRoCompat & Features.RoCompatSparseSuper) == 0) return true;
        if ((g & 1) == 0) return false;
        return IsPowerOf(g, 3) || IsPowerOf(g, 5) || IsPowerOf(g, 7);
    }

    private static bool IsPowerOf(uint g, uint b)
    {
        ulong n = b;
        while (n < g) n *= b;
        return n == g;
    }
}
