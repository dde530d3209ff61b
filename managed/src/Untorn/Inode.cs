using System.Buffers.Binary;

namespace Untorn;

/// <summary>File type bits of i_mode (S_IF*).</summary>
public static class InodeMode
{
    public const ushort TypeMask = 0xF000, Fifo = 0x1000, Char = 0x2000, Dir = 0x4000, Block = 0x6000,
        Regular = 0x8000, Symlink = 0xA000, Socket = 0xC000;
}

/// <summary>i_flags bits.</summary>
public static class InodeFlags
{
    public const uint Immutable = 0x10, Append = 0x20, NoDump = 0x40, Encrypt = 0x800, Index = 0x1000,
        HugeFile = 0x40000, Extents = 0x80000, Verity = 0x100000, EaInode = 0x200000, InlineData = 0x10000000,
        Casefold = 0x40000000;
}

/// <summary>A timestamp: seconds (with the extra epoch bits applied) and nanoseconds.</summary>
public readonly record struct Ext4Time(long Seconds, uint Nanoseconds);

/// <summary>
/// An on-disk inode (128 bytes plus i_extra_isize), parsed and checksum-verified. Immutable: a
/// reader holds a consistent snapshot.
/// </summary>
public sealed class Inode
{
    public const int GoodOldSize = 128, BlockArrayOffset = 0x28, BlockArraySize = 60;
    private const int ChecksumLoOffset = 0x7C, ChecksumHiOffset = 0x82, ExtraIsizeOffset = 0x80;

    public uint Number { get; private init; }
    public ushort Mode { get; private init; }
    public uint Uid { get; private init; }
    public uint Gid { get; private init; }
    public ulong Size { get; private init; }
    public ushort LinksCount { get; private init; }
    /// <summary>i_blocks as stored (units depend on HUGE_FILE; see <see cref="Sectors"/>).</summary>
    public ulong BlocksRaw { get; private init; }
    public ulong Sectors { get; private init; }
    public uint Flags { get; private init; }
    public uint Generation { get; private init; }
    public ulong FileAcl { get; private init; }
    public ushort ExtraIsize { get; private init; }
    public Ext4Time Atime { get; private init; }
    public Ext4Time Mtime { get; private init; }
    public Ext4Time Ctime { get; private init; }
    public Ext4Time? Crtime { get; private init; }
    public uint Dtime { get; private init; }
    /// <summary>The raw inode bytes (s_inode_size of them); i_block lives at 0x28.</summary>
    public byte[] Raw { get; private init; } = [];
    /// <summary>Seed for checksums of blocks owned by this inode (extent, directory blocks).</summary>
    public uint CsumSeed { get; private init; }

    public ReadOnlySpan<byte> BlockArray => Raw.AsSpan(BlockArrayOffset, BlockArraySize);
    public ushort Type => (ushort)(Mode & InodeMode.TypeMask);
    public bool IsDir => Type == InodeMode.Dir;
    public bool IsRegular => Type == InodeMode.Regular;
    public bool IsSymlink => Type == InodeMode.Symlink;
    public bool HasExtents => (Flags & InodeFlags.Extents) != 0;
    public bool HasInlineData => (Flags & InodeFlags.InlineData) != 0;
    public bool IsIndexedDir => (Flags & InodeFlags.Index) != 0;

    /// <summary>Whether an extra field ending at byte offset <paramref name="end"/> fits in i_extra_isize.</summary>
    public bool Fits(int end) => Raw.Length > GoodOldSize && GoodOldSize + ExtraIsize >= end;

    public static Inode Parse(uint ino, ReadOnlySpan<byte> raw, Superblock sb)
    {
        var v = new LeView(raw);
        int length = raw.Length;
        ushort extra = length > GoodOldSize ? v.U16(ExtraIsizeOffset) : (ushort)0;
        if (raw.Length > GoodOldSize && (GoodOldSize + extra > raw.Length || (extra & 3) != 0))
            throw Ext4Exception.Corrupted($"inode {ino}: bad i_extra_isize {extra}");
        uint csumSeed = 0;
        if (sb.HasMetadataCsum)
        {
            csumSeed = ChecksumSeed(sb, ino, v.U32(0x64));
            VerifyChecksum(ino, raw, extra, csumSeed);
        }
        var rawCopy = raw.ToArray();
        bool fits(int end) => length > GoodOldSize && GoodOldSize + extra >= end;
        Ext4Time time(uint seconds, uint? extraField)
        {
            long sec = (int)seconds;
            uint x = extraField ?? 0;
            return new Ext4Time(sec + ((long)(x & 3) << 32), x >> 2);
        }
        uint? extraAt(int off) => fits(off + 4) ? BinaryPrimitives.ReadUInt32LittleEndian(rawCopy.AsSpan(off)) : null;

        uint flags = v.U32(0x20);
        ulong blocks = v.U32(0x1C);
        if (sb.HasHugeFile) blocks |= (ulong)v.U16(0x74) << 32;
        ulong sectors = (flags & InodeFlags.HugeFile) != 0 && sb.HasHugeFile
            ? blocks * (ulong)(sb.BlockSize / 512)
            : blocks;
        return new Inode
        {
            Number = ino,
            Mode = v.U16(0x0),
            Uid = v.U16(0x2) | (uint)v.U16(0x78) << 16,
            Gid = v.U16(0x18) | (uint)v.U16(0x7A) << 16,
            Size = v.U32(0x4) | (ulong)v.U32(0x6C) << 32,
            LinksCount = v.U16(0x1A),
            BlocksRaw = blocks,
            Sectors = sectors,
            Flags = flags,
            Generation = v.U32(0x64),
            FileAcl = v.U32(0x68) | (ulong)v.U16(0x76) << 32,
            ExtraIsize = extra,
            Atime = time(v.U32(0x08), extraAt(0x8C)),
            Ctime = time(v.U32(0x0C), extraAt(0x84)),
            Mtime = time(v.U32(0x10), extraAt(0x88)),
            Crtime = fits(0x98) ? time(v.U32(0x90), extraAt(0x94)) : null,
            Dtime = v.U32(0x14),
            Raw = rawCopy,
            CsumSeed = csumSeed,
        };
    }

    /// <summary>
    /// i_checksum: crc32c from the inode's seed over the whole on-disk inode with both checksum
    /// halves skipped; only the low 16 bits are kept when the inode has no room for the high half.
    /// </summary>
    public static uint ComputeChecksum(ReadOnlySpan<byte> raw, uint seed)
    {
        ushort extra = raw.Length > GoodOldSize ? BinaryPrimitives.ReadUInt16LittleEndian(raw[ExtraIsizeOffset..]) : (ushort)0;
        bool hasHi = raw.Length > GoodOldSize && extra >= 4;
        uint crc = Crc.Crc32cSkipping(seed, raw[..GoodOldSize], ChecksumLoOffset, 2);
        if (raw.Length > GoodOldSize)
        {
            var rest = raw[GoodOldSize..];
            crc = hasHi
                ? Crc.Crc32cSkipping(crc, rest, ChecksumHiOffset - GoodOldSize, 2)
                : Crc.Crc32c(crc, rest);
        }
        return hasHi ? crc : crc & 0xFFFF;
    }

    /// <summary>The per-inode checksum seed: crc32c(fs seed, inode number, generation).</summary>
    public static uint ChecksumSeed(Superblock sb, uint ino, uint generation) =>
        Crc.Crc32c(Crc.Crc32c(sb.CsumSeed, ino), generation);

    /// <summary>Writes i_checksum_lo (and _hi where it fits) of a raw inode after an edit.</summary>
    public static void UpdateChecksum(Span<byte> raw, uint ino, Superblock sb)
    {
        if (!sb.HasMetadataCsum) return;
        uint crc = ComputeChecksum(raw, ChecksumSeed(sb, ino, BinaryPrimitives.ReadUInt32LittleEndian(raw[0x64..])));
        BinaryPrimitives.WriteUInt16LittleEndian(raw[ChecksumLoOffset..], (ushort)crc);
        if (raw.Length > GoodOldSize && BinaryPrimitives.ReadUInt16LittleEndian(raw[ExtraIsizeOffset..]) >= 4)
            BinaryPrimitives.WriteUInt16LittleEndian(raw[ChecksumHiOffset..], (ushort)(crc >> 16));
    }

    private static void VerifyChecksum(uint ino, ReadOnlySpan<byte> raw, ushort extra, uint seed)
    {
        bool hasHi = raw.Length > GoodOldSize && extra >= 4;
        uint stored = BinaryPrimitives.ReadUInt16LittleEndian(raw[ChecksumLoOffset..]);
        if (hasHi) stored |= (uint)BinaryPrimitives.ReadUInt16LittleEndian(raw[ChecksumHiOffset..]) << 16;
        uint crc = ComputeChecksum(raw, seed);
        if (crc != stored)
        {
            // An inode never written (all zero) has no checksum; only a used one is corrupt.
            if (!raw.ContainsAnyExcept((byte)0)) return;
            throw Ext4Exception.BadChecksum($"inode {ino} (stored 0x{stored:x8}, computed 0x{crc:x8})");
        }
    }
}
