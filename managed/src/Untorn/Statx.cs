namespace Untorn;

/// <summary>statx(2) request/result mask bits and attribute bits (Linux UAPI values).</summary>
public static class StatxMask
{
    public const uint Type = 0x1, Mode = 0x2, Nlink = 0x4, Uid = 0x8, Gid = 0x10, Atime = 0x20, Mtime = 0x40,
        Ctime = 0x80, Ino = 0x100, Size = 0x200, Blocks = 0x400, BasicStats = 0x7ff, Btime = 0x800,
        MntId = 0x1000, DioAlign = 0x2000, MntIdUnique = 0x4000, Subvol = 0x8000, WriteAtomic = 0x10000,
        DioReadAlign = 0x20000, Reserved = 0x80000000;

    public const ulong AttrImmutable = 0x10, AttrAppend = 0x20, AttrNoDump = 0x40, AttrEncrypted = 0x800,
        AttrMountRoot = 0x2000, AttrVerity = 0x100000, AttrDax = 0x200000, AttrWriteAtomic = 0x400000;
}

/// <summary>What statx reports for one inode (the managed twin of struct untorn_statx).</summary>
public sealed record StatxData
{
    public uint Mask { get; init; }
    public uint BlkSize { get; init; }
    public ulong Attributes { get; init; }
    public ulong AttributesMask { get; init; }
    public uint Nlink { get; init; }
    public uint Uid { get; init; }
    public uint Gid { get; init; }
    public ushort Mode { get; init; }
    public ulong Ino { get; init; }
    public ulong Size { get; init; }
    public ulong Blocks { get; init; }
    public Ext4Time Atime { get; init; }
    public Ext4Time Btime { get; init; }
    public Ext4Time Ctime { get; init; }
    public Ext4Time Mtime { get; init; }
    public uint DioMemAlign { get; init; }
    public uint DioOffsetAlign { get; init; }
    public uint AtomicWriteUnitMin { get; init; }
    public uint AtomicWriteUnitMax { get; init; }
    public uint AtomicWriteSegmentsMax { get; init; }
    public uint AtomicWriteUnitMaxOpt { get; init; }
}

/// <summary>ext4_getattr plus the VFS's generic_fillattr, as Linux 6.18 fills them.</summary>
internal static class Getattr
{
    private const ulong Ext4AttributesMask = StatxMask.AttrAppend | StatxMask.AttrEncrypted | StatxMask.AttrImmutable |
        StatxMask.AttrNoDump | StatxMask.AttrVerity | StatxMask.AttrDax;

    public static StatxData Fill(Ext4Fs fs, Inode inode, uint request)
    {
        uint mask = StatxMask.BasicStats;
        ulong attrs = 0, attrsMask = Ext4AttributesMask | StatxMask.AttrMountRoot;
        if ((inode.Flags & InodeFlags.Append) != 0) attrs |= StatxMask.AttrAppend;
        if ((inode.Flags & InodeFlags.Encrypt) != 0) attrs |= StatxMask.AttrEncrypted;
        if ((inode.Flags & InodeFlags.Immutable) != 0) attrs |= StatxMask.AttrImmutable;
        if ((inode.Flags & InodeFlags.NoDump) != 0) attrs |= StatxMask.AttrNoDump;
        if ((inode.Flags & InodeFlags.Verity) != 0) attrs |= StatxMask.AttrVerity;
        if (inode.Number == Ext4Fs.RootIno) attrs |= StatxMask.AttrMountRoot;

        Ext4Time btime = default;
        if ((request & StatxMask.Btime) != 0 && inode.Crtime is { } crtime)
        {
            mask |= StatxMask.Btime;
            btime = crtime;
        }
        uint dioAlign = 0;
        if ((request & StatxMask.DioAlign) != 0 && inode.IsRegular)
        {
            mask |= StatxMask.DioAlign;
            dioAlign = DioAlignment(fs, inode);
        }
        if ((request & StatxMask.WriteAtomic) != 0 && inode.IsRegular)
        {
            // generic_fill_statx_atomic_writes: the mask bit and the attribute's mask bit always;
            // the attribute itself only with a non-zero unit (atomic writes are not served yet).
            mask |= StatxMask.WriteAtomic;
            attrsMask |= StatxMask.AttrWriteAtomic;
        }
        return new StatxData
        {
            Mask = mask,
            BlkSize = (uint)fs.Super.BlockSize,
            Attributes = attrs,
            AttributesMask = attrsMask,
            Nlink = inode.LinksCount,
            Uid = inode.Uid,
            Gid = inode.Gid,
            Mode = inode.Mode,
            Ino = inode.Number,
            Size = inode.Size,
            // ext4_file_getattr (regular files only): inline data occupies no block, but reports its size in sectors so
            // tools (tar, rsync) do not take the file for entirely sparse.
            Blocks = inode.Sectors + (inode.IsRegular && inode.HasInlineData ? (inode.Size + 511) >> 9 : 0),
            Atime = inode.Atime,
            Btime = btime,
            Ctime = inode.Ctime,
            Mtime = inode.Mtime,
            DioMemAlign = dioAlign,
            DioOffsetAlign = dioAlign,
        };
    }

    // ext4_dio_alignment: no direct I/O for inline-data, encrypted or verity files; otherwise the
    // device's logical sector size (iomap's default), as a loop device reports it.
    public static uint DioAlignment(Ext4Fs fs, Inode inode)
    {
        if (inode.HasInlineData || (inode.Flags & (InodeFlags.Encrypt | InodeFlags.Verity)) != 0) return 0;
        return (uint)fs.Device.SectorSize;
    }
}
