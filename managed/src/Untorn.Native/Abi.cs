using System.Runtime.InteropServices;

namespace Untorn.Native;

/// <summary>An opened image. Opaque: only pointers to it cross the ABI.</summary>
[COpaque("untorn_fs")]
public struct UntornFs
{
}

/// <summary>One buffer of a vectored read or write.</summary>
[CExternal("iovec", "sys/uio.h")]
[StructLayout(LayoutKind.Sequential)]
public unsafe struct Iovec
{
    public void* Base;
    public nuint Len;
}

/// <summary>Options for untorn_open_image. Set size = sizeof(struct untorn_open_opts); a NULL opts means defaults.</summary>
[CStruct("untorn_open_opts")]
[StructLayout(LayoutKind.Sequential)]
public struct UntornOpenOpts
{
    /// <summary>sizeof(struct untorn_open_opts) as the caller knows it (for ABI growth).</summary>
    public uint size;
    /// <summary>UNTORN_OPEN_* flags.</summary>
    public uint flags;
}

/// <summary>A statx timestamp: seconds and nanoseconds since the epoch.</summary>
[CStruct("untorn_statx_timestamp")]
[StructLayout(LayoutKind.Sequential)]
public struct UntornStatxTimestamp
{
    public long tv_sec;
    public uint tv_nsec;
    public int __reserved;
}

/// <summary>Byte-for-byte the Linux UAPI struct statx (256 bytes), under untorn's own name.</summary>
[CStruct("untorn_statx")]
[StructLayout(LayoutKind.Sequential)]
public unsafe struct UntornStatx
{
    public uint stx_mask;
    public uint stx_blksize;
    public ulong stx_attributes;
    public uint stx_nlink;
    public uint stx_uid;
    public uint stx_gid;
    public ushort stx_mode;
    public ushort __spare0;
    public ulong stx_ino;
    public ulong stx_size;
    public ulong stx_blocks;
    public ulong stx_attributes_mask;
    public UntornStatxTimestamp stx_atime;
    public UntornStatxTimestamp stx_btime;
    public UntornStatxTimestamp stx_ctime;
    public UntornStatxTimestamp stx_mtime;
    public uint stx_rdev_major;
    public uint stx_rdev_minor;
    public uint stx_dev_major;
    public uint stx_dev_minor;
    public ulong stx_mnt_id;
    public uint stx_dio_mem_align;
    public uint stx_dio_offset_align;
    public ulong stx_subvol;
    public uint stx_atomic_write_unit_min;
    public uint stx_atomic_write_unit_max;
    public uint stx_atomic_write_segments_max;
    public uint stx_dio_read_offset_align;
    public uint stx_atomic_write_unit_max_opt;
    public uint __spare2;
    public fixed ulong __spare3[8];
}

/// <summary>One directory entry returned by untorn_readdir.</summary>
[CStruct("untorn_dirent")]
[StructLayout(LayoutKind.Sequential)]
public unsafe struct UntornDirent
{
    /// <summary>Inode number.</summary>
    public ulong d_ino;
    /// <summary>Position cookie of the entry after this one.</summary>
    public long d_off;
    /// <summary>DT_* file type (DT_REG 8, DT_DIR 4, DT_LNK 10, ...), DT_UNKNOWN 0 without filetype.</summary>
    public byte d_type;
    /// <summary>Length of d_name, without the terminating NUL.</summary>
    public byte d_namelen;
    public fixed byte __pad[6];
    /// <summary>NUL-terminated name.</summary>
    [CType("char")]
    public fixed byte d_name[256];
}

/// <summary>Flags of untorn_open_opts.flags.</summary>
[CConstants]
public static class OpenImageFlags
{
    /// <summary>Open the image read-only: every call that would modify it fails with -EROFS.</summary>
    public const uint UNTORN_OPEN_RDONLY = 0x1;
    /// <summary>With UNTORN_OPEN_RDONLY only: do not replay a journal that needs recovery (reads see the image as it is; untorn_fs_info reports UNTORN_FS_NOT_REPLAYED).</summary>
    public const uint UNTORN_OPEN_NOREPLAY = 0x2;
}

/// <summary>Special directory descriptor: resolve paths from the image root (like AT_FDCWD).</summary>
[CConstants]
public static class DirFdConstants
{
    /// <summary>dirfd meaning "the root directory of the image".</summary>
    public const int UNTORN_AT_ROOT = -100;
}

/// <summary>Linux RWF_* flags for untorn_preadv2/untorn_pwritev2 (older libc headers lack RWF_ATOMIC).</summary>
[CConstants]
public static class RwfConstants
{
    /// <summary>High-priority request (accepted, no effect).</summary>
    public const int UNTORN_RWF_HIPRI = 0x01;
    /// <summary>Per-IO O_DSYNC.</summary>
    public const int UNTORN_RWF_DSYNC = 0x02;
    /// <summary>Per-IO O_SYNC.</summary>
    public const int UNTORN_RWF_SYNC = 0x04;
    /// <summary>Fail with -EAGAIN rather than block.</summary>
    public const int UNTORN_RWF_NOWAIT = 0x08;
    /// <summary>Per-IO O_APPEND.</summary>
    public const int UNTORN_RWF_APPEND = 0x10;
    /// <summary>Per-IO negation of O_APPEND.</summary>
    public const int UNTORN_RWF_NOAPPEND = 0x20;
    /// <summary>All or nothing: the write is never torn.</summary>
    public const int UNTORN_RWF_ATOMIC = 0x40;
}

/// <summary>statx(2) mask and attribute bits untorn reports (older libc headers lack the newer ones).</summary>
[CConstants]
public static class StatxConstants
{
    /// <summary>Type, mode, nlink, uid, gid, times, ino, size, blocks.</summary>
    public const uint UNTORN_STATX_BASIC_STATS = 0x7ff;
    /// <summary>stx_btime (creation time).</summary>
    public const uint UNTORN_STATX_BTIME = 0x800;
    /// <summary>stx_dio_mem_align and stx_dio_offset_align.</summary>
    public const uint UNTORN_STATX_DIOALIGN = 0x2000;
    /// <summary>stx_atomic_write_unit_min/_max/_segments_max (and _unit_max_opt).</summary>
    public const uint UNTORN_STATX_WRITE_ATOMIC = 0x10000;
    /// <summary>stx_dio_read_offset_align.</summary>
    public const uint UNTORN_STATX_DIO_READ_ALIGN = 0x20000;
    /// <summary>stx_attributes bit: the file supports atomic writes.</summary>
    public const uint UNTORN_STATX_ATTR_WRITE_ATOMIC = 0x400000;
}

/// <summary>One mapping reported by untorn_fiemap, in bytes.</summary>
[CStruct("untorn_extent")]
[StructLayout(LayoutKind.Sequential)]
public struct UntornExtent
{
    /// <summary>Byte offset in the file.</summary>
    public ulong fe_logical;
    /// <summary>Byte address on the device (image).</summary>
    public ulong fe_physical;
    /// <summary>Length in bytes.</summary>
    public ulong fe_length;
    /// <summary>UNTORN_EXTENT_* flags.</summary>
    public uint fe_flags;
    public uint fe_reserved;
}

/// <summary>untorn_fiemap extent flags (the FIEMAP_EXTENT_* values).</summary>
[CConstants]
public static class ExtentFlagConstants
{
    /// <summary>The file's last extent.</summary>
    public const uint UNTORN_EXTENT_LAST = 0x1;
    /// <summary>Allocated but not written: reads as zeros.</summary>
    public const uint UNTORN_EXTENT_UNWRITTEN = 0x800;
}

/// <summary>untorn_fallocate modes (the FALLOC_FL_* values) and untorn_alloc_aligned flags.</summary>
[CConstants]
public static class AllocConstants
{
    /// <summary>fallocate: do not change the file size.</summary>
    public const int UNTORN_FALLOC_KEEP_SIZE = 0x1;
    /// <summary>fallocate: free the range (with UNTORN_FALLOC_KEEP_SIZE).</summary>
    public const int UNTORN_FALLOC_PUNCH_HOLE = 0x2;
    /// <summary>fallocate: make the range read as zeros, keeping it allocated.</summary>
    public const int UNTORN_FALLOC_ZERO_RANGE = 0x10;
    /// <summary>untorn_alloc_aligned: do not change the file size.</summary>
    public const int UNTORN_ALLOC_KEEP_SIZE = 0x1;
}

/// <summary>A timestamp for untorn_utimensat (struct timespec with fixed-width fields); tv_nsec may be UNTORN_UTIME_NOW or UNTORN_UTIME_OMIT.</summary>
[CStruct("untorn_timespec")]
[StructLayout(LayoutKind.Sequential)]
public struct UntornTimespec
{
    /// <summary>Seconds since the epoch.</summary>
    public long tv_sec;
    /// <summary>Nanoseconds, 0 to 999999999, or a UNTORN_UTIME_* marker.</summary>
    public long tv_nsec;
}

/// <summary>untorn_utimensat tv_nsec markers (the Linux UTIME_* values).</summary>
[CConstants]
public static class UtimeConstants
{
    /// <summary>Set this timestamp to the current time.</summary>
    public const int UNTORN_UTIME_NOW = (1 << 30) - 1;
    /// <summary>Leave this timestamp unchanged.</summary>
    public const int UNTORN_UTIME_OMIT = (1 << 30) - 2;
}

/// <summary>What untorn_fs_info reports. Set size = sizeof(struct untorn_fs_info); on return it holds the bytes filled.</summary>
[CStruct("untorn_fs_info")]
[StructLayout(LayoutKind.Sequential)]
public unsafe struct UntornFsInfo
{
    /// <summary>sizeof(struct untorn_fs_info) as the caller knows it; set to the bytes filled on return (for ABI growth).</summary>
    public uint size;
    /// <summary>UNTORN_FS_* flags.</summary>
    public uint flags;
    /// <summary>Block size in bytes.</summary>
    public uint block_size;
    /// <summary>Allocation unit in bytes (the block size unless bigalloc).</summary>
    public uint cluster_size;
    /// <summary>Blocks in the filesystem (s_blocks_count).</summary>
    public ulong blocks_count;
    /// <summary>Free blocks (the group descriptors' sum, as statfs counts them).</summary>
    public ulong free_blocks;
    /// <summary>Blocks reserved for root (s_r_blocks_count).</summary>
    public ulong reserved_blocks;
    /// <summary>Inodes in the filesystem.</summary>
    public uint inodes_count;
    /// <summary>Free inodes (the group descriptors' sum).</summary>
    public uint free_inodes;
    /// <summary>On-disk inode size in bytes (128: times in whole seconds up to 2038).</summary>
    public uint inode_size;
    /// <summary>s_feature_compat (0x4: has_journal).</summary>
    public uint feature_compat;
    /// <summary>s_feature_incompat (0x4: needs_recovery).</summary>
    public uint feature_incompat;
    /// <summary>s_feature_ro_compat.</summary>
    public uint feature_ro_compat;
    /// <summary>Committed journal transactions replayed at open.</summary>
    public uint replayed_transactions;
    /// <summary>The filesystem UUID (s_uuid).</summary>
    public fixed byte uuid[16];
    /// <summary>The volume label (s_volume_name): NUL-padded, not NUL-terminated when 16 bytes long.</summary>
    [CType("char")]
    public fixed byte volume_name[16];
}

/// <summary>untorn_fs_info flags: the guarantees of an opened image.</summary>
[CConstants]
public static class FsInfoFlags
{
    /// <summary>The filesystem has a journal: each metadata operation commits as a unit and survives a crash (without it, metadata is written in place and a crash may need e2fsck).</summary>
    public const uint UNTORN_FS_JOURNALED = 0x1;
    /// <summary>Opened read-only: every modifying call fails with -EROFS.</summary>
    public const uint UNTORN_FS_READONLY = 0x2;
    /// <summary>The journal needed recovery and committed transactions were replayed at open.</summary>
    public const uint UNTORN_FS_REPLAYED = 0x4;
    /// <summary>Opened with UNTORN_OPEN_NOREPLAY on a journal that needs recovery: reads show the image without its last committed changes.</summary>
    public const uint UNTORN_FS_NOT_REPLAYED = 0x8;
}
