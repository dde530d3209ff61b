using System.Buffers.Binary;

namespace Untorn;

/// <summary>
/// A mutable copy of one on-disk inode for the length of a metadata operation (the kernel's
/// ext4_iloc + ext4_do_update_inode): typed field access over the raw bytes, so the fields
/// untorn does not model survive untouched, and <see cref="Save"/> writes it back with its checksum.
/// </summary>
internal sealed class InodeBuffer
{
    private readonly Superblock _sb;

    private InodeBuffer(uint ino, byte[] raw, Superblock sb)
    {
        Number = ino;
        Raw = raw;
        _sb = sb;
    }

    public uint Number { get; }
    public byte[] Raw { get; }

    /// <summary>Reads (through the buffer cache) and verifies inode <paramref name="ino"/>.</summary>
    public static InodeBuffer Load(Ext4Fs fs, uint ino)
    {
        var raw = new byte[fs.Super.InodeSize];
        fs.Device.Read(fs.InodeOffset(ino), raw);
        Inode.Parse(ino, raw, fs.Super); // validates size fields and the checksum
        return new InodeBuffer(ino, raw, fs.Super);
    }

    /// <summary>
    /// A freshly allocated inode: zeroed, then mode, one link, the time now in every stamp, room
    /// for the extra fields (i_extra_isize 32, as the kernel's s_want_extra_isize), a random
    /// generation (the checksum seed and NFS handles depend on it).
    /// </summary>
    public static InodeBuffer CreateNew(Ext4Fs fs, uint ino, ushort mode)
    {
        var b = new InodeBuffer(ino, new byte[fs.Super.InodeSize], fs.Super);
        b.Mode = mode;
        b.LinksCount = 1;
        if (b.Raw.Length > Inode.GoodOldSize) BinaryPrimitives.WriteUInt16LittleEndian(b.Raw.AsSpan(0x80), 32);
        BinaryPrimitives.WriteUInt32LittleEndian(b.Raw.AsSpan(0x64), (uint)Random.Shared.Next());
        var now = DateTimeOffset.UtcNow;
        b.SetTime(0x08, 0x8C, now);
        b.SetTime(0x0C, 0x84, now);
        b.SetTime(0x10, 0x88, now);
        if (b.Raw.Length >= 0x98) b.SetTime(0x90, 0x94, now); // i_crtime lives in the extra fields
        return b;
    }

    /// <summary>Writes the inode into its inode-table block inside the handle, checksum updated.</summary>
    public void Save(TransactionManager.Handle h, Ext4Fs fs)
    {
        long off = fs.InodeOffset(Number);
        ulong block = (ulong)(off / _sb.BlockSize);
        var data = h.GetWriteAccess(block);
        var slot = data.AsSpan((int)(off % _sb.BlockSize), _sb.InodeSize);
        Raw.CopyTo(slot);
        Inode.UpdateChecksum(slot, Number, _sb);
        slot.CopyTo(Raw);
        h.Dirty(block, data);
    }

    /// <summary>The parsed, read-only view of the current (possibly not yet saved) bytes.</summary>
    public Inode Parsed
    {
        get
        {
            var copy = Raw.ToArray();
            Inode.UpdateChecksum(copy, Number, _sb);
            return Inode.Parse(Number, copy, _sb);
        }
    }

    public Span<byte> BlockArray => Raw.AsSpan(Inode.BlockArrayOffset, Inode.BlockArraySize);

    public ushort Mode
    {
        get => BinaryPrimitives.ReadUInt16LittleEndian(Raw);
        set => BinaryPrimitives.WriteUInt16LittleEndian(Raw, value);
    }

    public ushort LinksCount
    {
        get => BinaryPrimitives.ReadUInt16LittleEndian(Raw.AsSpan(0x1A));
        set => BinaryPrimitives.WriteUInt16LittleEndian(Raw.AsSpan(0x1A), value);
    }

    public uint Flags
    {
        get => BinaryPrimitives.ReadUInt32LittleEndian(Raw.AsSpan(0x20));
        set => BinaryPrimitives.WriteUInt32LittleEndian(Raw.AsSpan(0x20), value);
    }

    /// <summary>
    /// Sets a timestamp: seconds at <paramref name="secondsOffset"/>, and where the inode has room
    /// for it, the extra field (nanoseconds &lt;&lt; 2 | epoch bits) at <paramref name="extraOffset"/>.
    /// </summary>
    public void SetTime(int secondsOffset, int extraOffset, DateTimeOffset t) =>
        SetTime(secondsOffset, extraOffset, t.ToUnixTimeSeconds(), (uint)(t.UtcTicks % TimeSpan.TicksPerSecond) * 100);

    /// <summary>
    /// EXT4_INODE_SET_XTIME: with room for the extra field, the low 32 bits of the seconds plus
    /// ext4_encode_extra_time's epoch bits (sec - (s32)sec) >> 32 and the nanoseconds; without it,
    /// the seconds clamped to the signed 32-bit range.
    /// </summary>
    public void SetTime(int secondsOffset, int extraOffset, long sec, uint nsec)
    {
        ushort extra = Raw.Length > Inode.GoodOldSize ? BinaryPrimitives.ReadUInt16LittleEndian(Raw.AsSpan(0x80)) : (ushort)0;
        if (Raw.Length > Inode.GoodOldSize && Inode.GoodOldSize + extra >= extraOffset + 4)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(Raw.AsSpan(secondsOffset), (uint)sec);
            BinaryPrimitives.WriteUInt32LittleEndian(Raw.AsSpan(extraOffset), nsec << 2 | (uint)((sec - (int)sec) >> 32) & 3);
        }
        else BinaryPrimitives.WriteInt32LittleEndian(Raw.AsSpan(secondsOffset), (int)Math.Clamp(sec, int.MinValue, int.MaxValue));
    }

    /// <summary>i_uid: the low 16 bits at 0x02, the high 16 in osd2's l_i_uid_high.</summary>
    public uint Uid
    {
        get => BinaryPrimitives.ReadUInt16LittleEndian(Raw.AsSpan(0x2)) | (uint)BinaryPrimitives.ReadUInt16LittleEndian(Raw.AsSpan(0x78)) << 16;
        set
        {
            BinaryPrimitives.WriteUInt16LittleEndian(Raw.AsSpan(0x2), (ushort)value);
            BinaryPrimitives.WriteUInt16LittleEndian(Raw.AsSpan(0x78), (ushort)(value >> 16));
        }
    }

    /// <summary>i_gid: the low 16 bits at 0x18, the high 16 in osd2's l_i_gid_high.</summary>
    public uint Gid
    {
        get => BinaryPrimitives.ReadUInt16LittleEndian(Raw.AsSpan(0x18)) | (uint)BinaryPrimitives.ReadUInt16LittleEndian(Raw.AsSpan(0x7A)) << 16;
        set
        {
            BinaryPrimitives.WriteUInt16LittleEndian(Raw.AsSpan(0x18), (ushort)value);
            BinaryPrimitives.WriteUInt16LittleEndian(Raw.AsSpan(0x7A), (ushort)(value >> 16));
        }
    }

    public uint Generation => BinaryPrimitives.ReadUInt32LittleEndian(Raw.AsSpan(0x64));

    /// <summary>The per-inode seed of extent-block and directory-block checksums.</summary>
    public uint CsumSeed => _sb.HasMetadataCsum ? Inode.ChecksumSeed(_sb, Number, Generation) : 0;

    public ulong Size
    {
        get => BinaryPrimitives.ReadUInt32LittleEndian(Raw.AsSpan(0x4)) | (ulong)BinaryPrimitives.ReadUInt32LittleEndian(Raw.AsSpan(0x6C)) << 32;
        set
        {
            BinaryPrimitives.WriteUInt32LittleEndian(Raw.AsSpan(0x4), (uint)value);
            BinaryPrimitives.WriteUInt32LittleEndian(Raw.AsSpan(0x6C), (uint)(value >> 32));
        }
    }

    /// <summary>
    /// i_blocks in 512-byte sectors. Values past 32 bits need huge_file (the high 16 bits at 0x74);
    /// past 48 bits the HUGE_FILE flag switches the unit to filesystem blocks.
    /// </summary>
    public ulong Sectors
    {
        get
        {
            ulong raw = BinaryPrimitives.ReadUInt32LittleEndian(Raw.AsSpan(0x1C));
            if (_sb.HasHugeFile) raw |= (ulong)BinaryPrimitives.ReadUInt16LittleEndian(Raw.AsSpan(0x74)) << 32;
            return (Flags & InodeFlags.HugeFile) != 0 && _sb.HasHugeFile ? raw * (ulong)(_sb.BlockSize / 512) : raw;
        }
        set
        {
            ulong raw = value;
            uint flags = Flags & ~InodeFlags.HugeFile;
            if (raw > uint.MaxValue && !_sb.HasHugeFile) throw new Ext4Exception(Errno.EFBIG, $"inode {Number}: i_blocks overflow without huge_file");
            if (raw >= 1UL << 48)
            {
                raw = value / (ulong)(_sb.BlockSize / 512);
                flags |= InodeFlags.HugeFile;
            }
            Flags = flags;
            BinaryPrimitives.WriteUInt32LittleEndian(Raw.AsSpan(0x1C), (uint)raw);
            if (_sb.HasHugeFile) BinaryPrimitives.WriteUInt16LittleEndian(Raw.AsSpan(0x74), (ushort)(raw >> 32));
        }
    }
}
