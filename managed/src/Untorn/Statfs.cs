using System.Buffers.Binary;

namespace Untorn;

/// <summary>What an opened filesystem is and guarantees (ext4_statfs plus how it was opened).</summary>
public sealed record FsInfo
{
    /// <summary>has_journal: every metadata operation commits as a unit and survives a crash.</summary>
    public bool Journaled { get; init; }
    public bool ReadOnly { get; init; }
    /// <summary>Committed transactions replayed from the journal at open.</summary>
    public int ReplayedTransactions { get; init; }
    /// <summary>Opened read-only without replaying a journal that needs recovery.</summary>
    public bool JournalNotReplayed { get; init; }
    public uint BlockSize { get; init; }
    public uint ClusterSize { get; init; }
    public ulong BlocksCount { get; init; }
    public ulong FreeBlocks { get; init; }
    public ulong ReservedBlocks { get; init; }
    public uint InodesCount { get; init; }
    public uint FreeInodes { get; init; }
    public uint InodeSize { get; init; }
    public uint FeatureCompat { get; init; }
    public uint FeatureIncompat { get; init; }
    public uint FeatureRoCompat { get; init; }
    public byte[] Uuid { get; init; } = [];
    /// <summary>s_volume_name as stored: 16 bytes, NUL-padded.</summary>
    public byte[] VolumeName { get; init; } = [];
}

public sealed partial class Ext4Fs
{
    /// <summary>
    /// The filesystem's geometry, counts and guarantees. Free counts are the group descriptors'
    /// sums, as the kernel's statfs counts them (its per-cpu counters start from those at mount);
    /// a snapshot that a concurrent write may already have changed.
    /// </summary>
    public FsInfo Info()
    {
        var (freeBlocks, freeInodes) = Groups.FreeSums();
        var raw = new byte[Superblock.Size];
        Device.Read(Superblock.Offset, raw);
        // s_r_blocks_count: the blocks only root may allocate (statfs's f_bfree - f_bavail).
        ulong reserved = BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(0x8))
            | (Super.Has64Bit ? (ulong)BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(0x150)) << 32 : 0);
        return new FsInfo
        {
            Journaled = IsCrashSafe,
            ReadOnly = ReadOnly,
            ReplayedTransactions = ReplayedTransactions,
            JournalNotReplayed = JournalNotReplayed,
            BlockSize = (uint)Super.BlockSize,
            ClusterSize = (uint)Super.ClusterSize,
            BlocksCount = Super.BlocksCount,
            FreeBlocks = freeBlocks,
            ReservedBlocks = reserved,
            InodesCount = Super.InodesCount,
            FreeInodes = freeInodes,
            InodeSize = Super.InodeSize,
            FeatureCompat = Super.FeatureCompat,
            FeatureIncompat = Super.FeatureIncompat,
            FeatureRoCompat = Super.FeatureRoCompat,
            Uuid = Super.Uuid.ToArray(),
            VolumeName = raw.AsSpan(0x78, 16).ToArray(),
        };
    }
}
