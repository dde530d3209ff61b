using System.Buffers.Binary;

namespace Untorn;

/// <summary>The jbd2 on-disk format (include/linux/jbd2.h): every field is big-endian.</summary>
internal static class Jbd2Format
{
    public const uint Magic = 0xC03B3998;
    public const uint BlockDescriptor = 1, BlockCommit = 2, BlockSuperV1 = 3, BlockSuperV2 = 4, BlockRevoke = 5;
    public const uint CompatChecksum = 0x1;
    public const uint IncompatRevoke = 0x1, Incompat64Bit = 0x2, IncompatAsyncCommit = 0x4,
        IncompatCsumV2 = 0x8, IncompatCsumV3 = 0x10, IncompatFastCommit = 0x20;
    public const uint TagEscape = 0x1, TagSameUuid = 0x2, TagDeleted = 0x4, TagLast = 0x8;
    public const byte ChecksumCrc32c = 4;
    public const int HeaderSize = 12, SuperblockSize = 1024, TailSize = 4;

    public static void WriteHeader(Span<byte> block, uint type, uint sequence)
    {
        BinaryPrimitives.WriteUInt32BigEndian(block, Magic);
        BinaryPrimitives.WriteUInt32BigEndian(block[4..], type);
        BinaryPrimitives.WriteUInt32BigEndian(block[8..], sequence);
    }

    public static bool HasHeader(ReadOnlySpan<byte> block, uint type, out uint sequence)
    {
        sequence = BinaryPrimitives.ReadUInt32BigEndian(block[8..]);
        return BinaryPrimitives.ReadUInt32BigEndian(block) == Magic && BinaryPrimitives.ReadUInt32BigEndian(block[4..]) == type;
    }
}

/// <summary>
/// The journal superblock (journal_superblock_t) of the internal journal, kept as its raw 1 KiB so
/// fields untorn does not model (users, fast-commit geometry) are written back unchanged.
/// </summary>
internal sealed class JournalSuperblock
{
    private readonly byte[] _raw;

    private JournalSuperblock(byte[] raw) => _raw = raw;

    public static JournalSuperblock Parse(ReadOnlySpan<byte> block, int fsBlockSize)
    {
        if (!Jbd2Format.HasHeader(block, Jbd2Format.BlockSuperV2, out _) && !Jbd2Format.HasHeader(block, Jbd2Format.BlockSuperV1, out _))
            throw Ext4Exception.Corrupted("journal superblock: bad magic or block type");
        var sb = new JournalSuperblock(block[..Jbd2Format.SuperblockSize].ToArray());
        if (sb.BlockSize != fsBlockSize) throw Ext4Exception.Corrupted($"journal block size {sb.BlockSize} != filesystem block size {fsBlockSize}");
        if (sb.First == 0 || sb.First >= sb.MaxLen) throw Ext4Exception.Corrupted($"journal log area {sb.First}..{sb.MaxLen} is empty");
        if (sb.IsV2 && (sb.FeatureIncompat & Jbd2Format.IncompatFastCommit) != 0)
            throw new Ext4Exception(Errno.EOPNOTSUPP, "journals with fast commits are not supported");
        if (sb.IsV2 && (sb.FeatureIncompat & (Jbd2Format.IncompatCsumV2 | Jbd2Format.IncompatCsumV3)) != 0)
        {
            if (sb._raw[0x50] != Jbd2Format.ChecksumCrc32c) throw Ext4Exception.Corrupted($"journal checksum type {sb._raw[0x50]}");
            if (sb.ComputeChecksum() != BinaryPrimitives.ReadUInt32BigEndian(sb._raw.AsSpan(0xFC)))
                throw Ext4Exception.BadChecksum("journal superblock");
        }
        return sb;
    }

    public bool IsV2 => BinaryPrimitives.ReadUInt32BigEndian(_raw.AsSpan(4)) == Jbd2Format.BlockSuperV2;
    public int BlockSize => (int)BinaryPrimitives.ReadUInt32BigEndian(_raw.AsSpan(0xC));
    public uint MaxLen => BinaryPrimitives.ReadUInt32BigEndian(_raw.AsSpan(0x10));
    public uint First => BinaryPrimitives.ReadUInt32BigEndian(_raw.AsSpan(0x14));

    /// <summary>s_sequence: the first transaction the log (from s_start) is expected to hold.</summary>
    public uint Sequence
    {
        get => BinaryPrimitives.ReadUInt32BigEndian(_raw.AsSpan(0x18));
        set => BinaryPrimitives.WriteUInt32BigEndian(_raw.AsSpan(0x18), value);
    }

    /// <summary>s_start: the log's first block; 0 means the journal is empty (clean).</summary>
    public uint Start
    {
        get => BinaryPrimitives.ReadUInt32BigEndian(_raw.AsSpan(0x1C));
        set => BinaryPrimitives.WriteUInt32BigEndian(_raw.AsSpan(0x1C), value);
    }

    public uint FeatureCompat
    {
        get => IsV2 ? BinaryPrimitives.ReadUInt32BigEndian(_raw.AsSpan(0x24)) : 0;
        set => BinaryPrimitives.WriteUInt32BigEndian(_raw.AsSpan(0x24), value);
    }

    public uint FeatureIncompat
    {
        get => IsV2 ? BinaryPrimitives.ReadUInt32BigEndian(_raw.AsSpan(0x28)) : 0;
        set => BinaryPrimitives.WriteUInt32BigEndian(_raw.AsSpan(0x28), value);
    }

    public ReadOnlySpan<byte> Uuid => _raw.AsSpan(0x30, 16);

    public bool HasCsumV2OrV3 => (FeatureIncompat & (Jbd2Format.IncompatCsumV2 | Jbd2Format.IncompatCsumV3)) != 0;
    public bool HasCsumV3 => (FeatureIncompat & Jbd2Format.IncompatCsumV3) != 0;
    public bool Has64Bit => (FeatureIncompat & Jbd2Format.Incompat64Bit) != 0;

    /// <summary>j_csum_seed: every journal block checksum starts from crc32c over the journal's uuid.</summary>
    public uint CsumSeed => Crc.Crc32c(~0u, Uuid);

    /// <summary>
    /// Turns on what the kernel sets when ext4 loads the journal: revoke records, 64-bit block
    /// numbers for a 64bit filesystem, and checksum v3 (crc32c) for a metadata_csum filesystem.
    /// </summary>
    public void EnableFeaturesFor(Superblock fs)
    {
        if (!IsV2) throw new Ext4Exception(Errno.EOPNOTSUPP, "version 1 journal superblocks are not written");
        uint incompat = FeatureIncompat | Jbd2Format.IncompatRevoke;
        if (fs.Has64Bit) incompat |= Jbd2Format.Incompat64Bit;
        if (fs.HasMetadataCsum)
        {
            incompat = (incompat & ~Jbd2Format.IncompatCsumV2) | Jbd2Format.IncompatCsumV3;
            FeatureCompat &= ~Jbd2Format.CompatChecksum;
            _raw[0x50] = Jbd2Format.ChecksumCrc32c;
        }
        FeatureIncompat = incompat;
    }

    private uint ComputeChecksum()
    {
        var copy = _raw.AsSpan().ToArray();
        copy.AsSpan(0xFC, 4).Clear();
        return Crc.Crc32c(~0u, copy);
    }

    /// <summary>The superblock as it goes to disk, its checksum set when the journal has one.</summary>
    public byte[] Serialize(int blockSize)
    {
        if (HasCsumV2OrV3) BinaryPrimitives.WriteUInt32BigEndian(_raw.AsSpan(0xFC), ComputeChecksum());
        var block = new byte[blockSize];
        _raw.CopyTo(block, 0);
        return block;
    }
}

/// <summary>
/// The internal journal of an opened filesystem: its superblock and where each log block lives
/// (the journal inode's blocks, mapped once at open).
/// </summary>
internal sealed class Jbd2Journal
{
    private readonly ulong[] _map;

    private Jbd2Journal(JournalSuperblock sb, ulong[] map)
    {
        Super = sb;
        _map = map;
    }

    public JournalSuperblock Super { get; }
    public int BlockSize => Super.BlockSize;

    public static Jbd2Journal Open(Ext4Fs fs)
    {
        uint ino = fs.Super.JournalInum;
        if (ino == 0) throw new Ext4Exception(Errno.EOPNOTSUPP, "the filesystem has no internal journal");
        var inode = fs.ReadInode(ino);
        ulong blocks = inode.Size / (ulong)fs.Super.BlockSize;
        if (blocks < 2 || blocks > 1 << 24) throw Ext4Exception.Corrupted($"journal inode {ino}: size {inode.Size}");
        var map = new ulong[blocks];
        var mapper = BlockMapper.For(fs, inode);
        for (ulong l = 0; l < blocks;)
        {
            var run = mapper.Map(l, blocks - l);
            if (run.IsHole) throw Ext4Exception.Corrupted($"journal inode {ino} has a hole at block {l}");
            for (ulong i = 0; i < run.Length && l + i < blocks; i++) map[l + i] = run.Physical + i;
            l += run.Length;
        }
        var raw = new byte[fs.Super.BlockSize];
        fs.Device.Read((long)map[0] * fs.Super.BlockSize, raw);
        var sb = JournalSuperblock.Parse(raw, fs.Super.BlockSize);
        if (sb.MaxLen > blocks) throw Ext4Exception.Corrupted($"journal superblock claims {sb.MaxLen} blocks, the inode has {blocks}");
        return new Jbd2Journal(sb, map);
    }

    /// <summary>The filesystem block holding log block <paramref name="logBlock"/>.</summary>
    public ulong Physical(uint logBlock) => _map[logBlock];

    /// <summary>The log block after <paramref name="logBlock"/>, wrapping from s_maxlen back to s_first.</summary>
    public uint Next(uint logBlock) => logBlock + 1 >= Super.MaxLen ? Super.First : logBlock + 1;

    /// <summary>journal_tag_bytes: tag3 with csum v3; else 12 bytes (+2 with csum v2), 4 fewer without 64-bit block numbers.</summary>
    public int TagSize => Super.HasCsumV3 ? 16
        : 12 + ((Super.FeatureIncompat & Jbd2Format.IncompatCsumV2) != 0 ? 2 : 0) - (Super.Has64Bit ? 0 : 4);
}
