using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using System.Text;

namespace Untorn.Native;

/// <summary>The C ABI of libuntorn.so. Every call returns >= 0 on success or -errno.</summary>
public static unsafe class Exports
{
    private const long MaxRwCount = int.MaxValue & ~4095L;
    private const int UioMaxIov = 1024;
    private static readonly ConcurrentDictionary<int, nint> Messages = new();
    private static readonly nint VersionString = Marshal.StringToCoTaskMemUTF8(LibraryVersion.Text);

    /// <summary>Open an ext4 image file or block device; *fsp receives the handle. opts may be NULL (read-write, journal replayed if needed).</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_open_image")]
    public static int OpenImage([CType("const char *")] byte* path, [CType("const struct untorn_open_opts *")] UntornOpenOpts* opts, UntornFs** fsp)
    {
        try
        {
            if (path == null || fsp == null) return -Errno.EFAULT;
            uint flags = 0;
            if (opts != null)
            {
                if (opts->size < sizeof(uint)) return -Errno.EINVAL;
                if (opts->size >= 2 * sizeof(uint)) flags = opts->flags;
            }
            const uint known = OpenImageFlags.UNTORN_OPEN_RDONLY | OpenImageFlags.UNTORN_OPEN_NOREPLAY;
            bool readOnly = (flags & OpenImageFlags.UNTORN_OPEN_RDONLY) != 0, noReplay = (flags & OpenImageFlags.UNTORN_OPEN_NOREPLAY) != 0;
            if ((flags & ~known) != 0 || noReplay && !readOnly) return -Errno.EINVAL; // like the kernel's noload, only read-only
            var fs = Ext4Fs.Open(Utf8(path), new OpenOptions { ReadOnly = readOnly, NoReplay = noReplay });
            *fsp = Handles.Register(fs);
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>Close an image and every descriptor opened on it.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_close_image")]
    public static int CloseImage(UntornFs* fs)
    {
        try
        {
            Handles.Remove(fs).Dispose();
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>Open a path of the image (resolved from its root); returns a descriptor. flags are Linux O_* values (O_CREAT and O_EXCL create a regular file with mode).</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_open")]
    public static int Open(UntornFs* fs, [CType("const char *")] byte* path, int flags, uint mode)
    {
        try
        {
            var f = Handles.Get(fs);
            if (path == null) return -Errno.EFAULT;
            return f.Open(Bytes(path), flags, mode);
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>Close a descriptor.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_close")]
    public static int Close(UntornFs* fs, int fd)
    {
        try
        {
            Handles.Get(fs).Close(fd);
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>Read up to len bytes at offset off; returns the count, 0 at end of file.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_pread")]
    [return: CType("ssize_t")]
    public static nint Pread(UntornFs* fs, int fd, void* buf, nuint len, long off)
    {
        try
        {
            var f = Handles.Get(fs);
            if (len > (nuint)nint.MaxValue) return -Errno.EINVAL;
            if (buf == null && len != 0) return -Errno.EFAULT;
            int n = (int)Math.Min((ulong)len, (ulong)MaxRwCount);
            return f.Pread(fd, new Span<byte>(buf, n), off, (ulong)buf);
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>Vectored read at off (-1: at and advancing the file position); flags are RWF_* values.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_preadv2")]
    [return: CType("ssize_t")]
    public static nint Preadv2(UntornFs* fs, int fd, [CType("const struct iovec *")] Iovec* iov, int iovcnt, long off, int flags)
    {
        try
        {
            var f = Handles.Get(fs);
            var segments = Segments(iov, iovcnt);
            return (nint)f.Preadv2(fd, segments, off, flags);
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>Write len bytes at offset off (the file grows as needed); returns the count. Needs a descriptor open for writing.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_pwrite")]
    [return: CType("ssize_t")]
    public static nint Pwrite(UntornFs* fs, int fd, [CType("const void *")] void* buf, nuint len, long off)
    {
        try
        {
            var f = Handles.Get(fs);
            if (len > (nuint)nint.MaxValue) return -Errno.EINVAL;
            if (buf == null && len != 0) return -Errno.EFAULT;
            int n = (int)Math.Min((ulong)len, (ulong)MaxRwCount);
            return (nint)f.Pwrite(fd, new ReadOnlySpan<byte>(buf, n), off, (ulong)buf);
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>Vectored write at off (-1: at and advancing the file position); flags are RWF_* values (RWF_DSYNC/RWF_SYNC commit before returning).</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_pwritev2")]
    [return: CType("ssize_t")]
    public static nint Pwritev2(UntornFs* fs, int fd, [CType("const struct iovec *")] Iovec* iov, int iovcnt, long off, int flags)
    {
        try
        {
            var f = Handles.Get(fs);
            var segments = Segments(iov, iovcnt);
            return (nint)f.Pwritev2(fd, segments, off, flags);
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>fsync(2): everything written so far is durable (the journal transaction is committed) when it returns.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_fsync")]
    public static int Fsync(UntornFs* fs, int fd)
    {
        try
        {
            Handles.Get(fs).Fsync(fd);
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>fdatasync(2): like untorn_fsync (data and the metadata needed to read it are committed together).</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_fdatasync")]
    public static int Fdatasync(UntornFs* fs, int fd)
    {
        try
        {
            Handles.Get(fs).Fdatasync(fd);
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>mkdir(2): create a directory at path (resolved from the image root) with the given permission bits.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_mkdir")]
    public static int Mkdir(UntornFs* fs, [CType("const char *")] byte* path, uint mode)
    {
        try
        {
            var f = Handles.Get(fs);
            if (path == null) return -Errno.EFAULT;
            f.Mkdir(Bytes(path), mode);
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>unlink(2): remove a name; the file's space is freed once no descriptor has it open.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_unlink")]
    public static int Unlink(UntornFs* fs, [CType("const char *")] byte* path)
    {
        try
        {
            var f = Handles.Get(fs);
            if (path == null) return -Errno.EFAULT;
            f.Unlink(Bytes(path));
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>rmdir(2): remove an empty directory.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_rmdir")]
    public static int Rmdir(UntornFs* fs, [CType("const char *")] byte* path)
    {
        try
        {
            var f = Handles.Get(fs);
            if (path == null) return -Errno.EFAULT;
            f.Rmdir(Bytes(path));
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>ftruncate(2): set the file size; blocks past it are freed.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_ftruncate")]
    public static int Ftruncate(UntornFs* fs, int fd, long length)
    {
        try
        {
            Handles.Get(fs).Ftruncate(fd, length);
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>fallocate(2): mode 0 or UNTORN_FALLOC_KEEP_SIZE reserve (unwritten) blocks; PUNCH_HOLE frees; ZERO_RANGE zeroes.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_fallocate")]
    public static int Fallocate(UntornFs* fs, int fd, int mode, long offset, long length)
    {
        try
        {
            Handles.Get(fs).Fallocate(fd, mode, offset, length);
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>Reserve unwritten blocks for [off, off+len) so that each align_bytes unit is one physically contiguous, align_bytes-aligned run (all or nothing; -EINVAL for a unit already mapped otherwise).</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_alloc_aligned")]
    public static int AllocAligned(UntornFs* fs, int fd, long off, long len, uint align_bytes, uint flags)
    {
        try
        {
            Handles.Get(fs).AllocAligned(fd, off, len, align_bytes, flags);
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>The extents overlapping [off, off+len): up to max into out, *count set to how many there are in all.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_fiemap")]
    public static int Fiemap(UntornFs* fs, int fd, long off, long len, UntornExtent* @out, uint max, uint* count)
    {
        try
        {
            var f = Handles.Get(fs);
            if (count == null || (@out == null && max != 0)) return -Errno.EFAULT;
            var list = f.Fiemap(fd, off, len);
            for (int i = 0; i < list.Count && i < max; i++)
                @out[i] = new UntornExtent { fe_logical = list[i].Logical, fe_physical = list[i].Physical, fe_length = list[i].Length, fe_flags = list[i].Flags };
            *count = (uint)list.Count;
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>rename(2): move oldpath to newpath, replacing a file by a file or an empty directory by a directory.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_rename")]
    public static int Rename(UntornFs* fs, [CType("const char *")] byte* oldpath, [CType("const char *")] byte* newpath)
    {
        try
        {
            var f = Handles.Get(fs);
            if (oldpath == null || newpath == null) return -Errno.EFAULT;
            f.Rename(Bytes(oldpath), Bytes(newpath));
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>link(2): a second name for a file (not a directory).</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_link")]
    public static int Link(UntornFs* fs, [CType("const char *")] byte* oldpath, [CType("const char *")] byte* newpath)
    {
        try
        {
            var f = Handles.Get(fs);
            if (oldpath == null || newpath == null) return -Errno.EFAULT;
            f.Link(Bytes(oldpath), Bytes(newpath));
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>symlink(2): create linkpath pointing at target (stored as given, not resolved).</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_symlink")]
    public static int Symlink(UntornFs* fs, [CType("const char *")] byte* target, [CType("const char *")] byte* linkpath)
    {
        try
        {
            var f = Handles.Get(fs);
            if (target == null || linkpath == null) return -Errno.EFAULT;
            f.Symlink(Bytes(target), Bytes(linkpath));
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>sync(2) for the image: commit everything written so far.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_sync")]
    public static int Sync(UntornFs* fs)
    {
        try
        {
            Handles.Get(fs).Sync();
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>statx(2) on the image: dirfd is UNTORN_AT_ROOT or a descriptor; AT_EMPTY_PATH with "" (or NULL) stats dirfd itself.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_statx")]
    public static int Statx(UntornFs* fs, int dirfd, [CType("const char *")] byte* path, int flags, uint mask, UntornStatx* @out)
    {
        try
        {
            var f = Handles.Get(fs);
            if (@out == null) return -Errno.EFAULT;
            if (path == null && (flags & AtFlags.EmptyPath) == 0) return -Errno.EFAULT;
            var st = f.Statx(dirfd, path == null ? [] : Bytes(path), flags, mask);
            Fill(@out, st);
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>utimensat(2): times[0] atime, times[1] mtime (NULL: both now; tv_nsec UNTORN_UTIME_NOW/_OMIT); ctime becomes now. dirfd is UNTORN_AT_ROOT or a descriptor; a NULL path with a descriptor is futimens(fd); flags AT_SYMLINK_NOFOLLOW, AT_EMPTY_PATH.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_utimensat")]
    public static int Utimensat(UntornFs* fs, int dirfd, [CType("const char *")] byte* path, [CType("const struct untorn_timespec *")] UntornTimespec* times, int flags)
    {
        try
        {
            var f = Handles.Get(fs);
            TimeSpec[]? ts = times == null ? null : [new(times[0].tv_sec, times[0].tv_nsec), new(times[1].tv_sec, times[1].tv_nsec)];
            if (path != null) f.Utimensat(dirfd, Bytes(path), ts, flags);
            else if (dirfd == AtFlags.Root) return -Errno.EFAULT;
            else if (flags != 0) return -Errno.EINVAL;
            else f.Futimens(dirfd, ts);
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>fchmodat2(2): set the permission, set-id and sticky bits (mode &amp; 07777) of path; ctime becomes now. flags AT_SYMLINK_NOFOLLOW (a symlink: -EOPNOTSUPP), AT_EMPTY_PATH.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_fchmodat")]
    public static int Fchmodat(UntornFs* fs, int dirfd, [CType("const char *")] byte* path, uint mode, int flags)
    {
        try
        {
            var f = Handles.Get(fs);
            if (path == null) return -Errno.EFAULT;
            f.Fchmodat(dirfd, Bytes(path), mode, flags);
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>fchownat(2) as root: uid or gid (uint32_t)-1 leaves it unchanged; a non-directory loses S_ISUID, and S_ISGID if group-executable; ctime becomes now. flags AT_SYMLINK_NOFOLLOW, AT_EMPTY_PATH.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_fchownat")]
    public static int Fchownat(UntornFs* fs, int dirfd, [CType("const char *")] byte* path, [CType("uint32_t")] uint uid, [CType("uint32_t")] uint gid, int flags)
    {
        try
        {
            var f = Handles.Get(fs);
            if (path == null) return -Errno.EFAULT;
            f.Fchownat(dirfd, Bytes(path), uid, gid, flags);
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>The image's guarantees (UNTORN_FS_* flags), geometry, free counts (like statfs), UUID and feature words. Set out->size first; fields past it are not written.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_fs_info")]
    public static int FsInfo(UntornFs* fs, UntornFsInfo* @out)
    {
        try
        {
            var f = Handles.Get(fs);
            if (@out == null) return -Errno.EFAULT;
            uint size = @out->size;
            if (size < 2 * sizeof(uint)) return -Errno.EINVAL; // at least size and flags
            var info = f.Info();
            var full = new UntornFsInfo
            {
                flags = (info.Journaled ? FsInfoFlags.UNTORN_FS_JOURNALED : 0) | (info.ReadOnly ? FsInfoFlags.UNTORN_FS_READONLY : 0)
                    | (info.ReplayedTransactions > 0 ? FsInfoFlags.UNTORN_FS_REPLAYED : 0) | (info.JournalNotReplayed ? FsInfoFlags.UNTORN_FS_NOT_REPLAYED : 0),
                block_size = info.BlockSize,
                cluster_size = info.ClusterSize,
                blocks_count = info.BlocksCount,
                free_blocks = info.FreeBlocks,
                reserved_blocks = info.ReservedBlocks,
                inodes_count = info.InodesCount,
                free_inodes = info.FreeInodes,
                inode_size = info.InodeSize,
                feature_compat = info.FeatureCompat,
                feature_incompat = info.FeatureIncompat,
                feature_ro_compat = info.FeatureRoCompat,
                replayed_transactions = (uint)info.ReplayedTransactions,
            };
            info.Uuid.CopyTo(new Span<byte>(full.uuid, 16));
            info.VolumeName.CopyTo(new Span<byte>(full.volume_name, 16));
            uint n = Math.Min(size, (uint)sizeof(UntornFsInfo));
            full.size = n;
            new ReadOnlySpan<byte>(&full, (int)n).CopyTo(new Span<byte>(@out, (int)n));
            return 0;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>Read up to max entries of the directory open on fd, from its position; returns the count, 0 at the end.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_readdir")]
    public static int Readdir(UntornFs* fs, int fd, UntornDirent* ents, uint max)
    {
        try
        {
            var f = Handles.Get(fs);
            if (ents == null) return -Errno.EFAULT;
            if (max == 0) return -Errno.EINVAL;
            var list = f.ReadDir(fd, (int)Math.Min(max, 65536u));
            for (int i = 0; i < list.Count; i++)
            {
                var d = &ents[i];
                *d = default;
                d->d_ino = list[i].Inode;
                d->d_off = list[i].NextPos;
                d->d_type = DirFileType.ToDt(list[i].FileType);
                d->d_namelen = (byte)list[i].Name.Length;
                list[i].Name.CopyTo(new Span<byte>(d->d_name, 255));
            }
            return list.Count;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>readlink(2): copy the target of the symbolic link at path (no NUL added, truncated to size).</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_readlink")]
    [return: CType("ssize_t")]
    public static nint Readlink(UntornFs* fs, [CType("const char *")] byte* path, [CType("char *")] byte* buf, nuint size)
    {
        try
        {
            var f = Handles.Get(fs);
            if (path == null || buf == null) return -Errno.EFAULT;
            if (size == 0 || size > (nuint)nint.MaxValue) return -Errno.EINVAL;
            var target = f.ReadLink(AtFlags.Root, Bytes(path));
            int n = (int)Math.Min((ulong)target.Length, (ulong)size);
            target.AsSpan(0, n).CopyTo(new Span<byte>(buf, n));
            return n;
        }
        catch (Exception e) { return ErrnoMapper.Of(e); }
    }

    /// <summary>A message for an error number (either sign); static storage, never NULL.</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_strerror")]
    [return: CType("const char *")]
    public static byte* Strerror(int err)
    {
        int key = err == int.MinValue ? int.MaxValue : Math.Abs(err);
        return (byte*)Messages.GetOrAdd(key, static k => Marshal.StringToCoTaskMemUTF8(Errno.Describe(k)));
    }

    /// <summary>The library version, "MAJOR.MINOR.PATCH".</summary>
    [UnmanagedCallersOnly(EntryPoint = "untorn_version")]
    [return: CType("const char *")]
    public static byte* GetVersion() => (byte*)VersionString;

    private static ReadOnlySpan<byte> Bytes(byte* s) => MemoryMarshal.CreateReadOnlySpanFromNullTerminated(s);

    private static string Utf8(byte* s) => Encoding.UTF8.GetString(Bytes(s));

    private static IoSegment[] Segments(Iovec* iov, int iovcnt)
    {
        if (iovcnt < 0 || iovcnt > UioMaxIov) throw new Ext4Exception(Errno.EINVAL, "bad iovec count");
        if (iovcnt > 0 && iov == null) throw new Ext4Exception(Errno.EFAULT, "NULL iovec array");
        var segs = new IoSegment[iovcnt];
        long total = 0;
        for (int i = 0; i < iovcnt; i++)
        {
            nuint len = iov[i].Len;
            if (len > (nuint)nint.MaxValue || (total += (long)len) < 0) throw new Ext4Exception(Errno.EINVAL, "iovec lengths overflow");
            if (len != 0 && iov[i].Base == null) throw new Ext4Exception(Errno.EFAULT, "NULL iovec buffer");
            int n = (int)Math.Min((ulong)len, (ulong)MaxRwCount);
            segs[i] = new IoSegment((ulong)iov[i].Base, new NativeBuffer((byte*)iov[i].Base, n).Memory);
        }
        return segs;
    }

    private static void Fill(UntornStatx* o, StatxData s)
    {
        *o = default;
        o->stx_mask = s.Mask;
        o->stx_blksize = s.BlkSize;
        o->stx_attributes = s.Attributes;
        o->stx_attributes_mask = s.AttributesMask;
        o->stx_nlink = s.Nlink;
        o->stx_uid = s.Uid;
        o->stx_gid = s.Gid;
        o->stx_mode = s.Mode;
        o->stx_ino = s.Ino;
        o->stx_size = s.Size;
        o->stx_blocks = s.Blocks;
        o->stx_atime = Time(s.Atime);
        o->stx_btime = Time(s.Btime);
        o->stx_ctime = Time(s.Ctime);
        o->stx_mtime = Time(s.Mtime);
        o->stx_dio_mem_align = s.DioMemAlign;
        o->stx_dio_offset_align = s.DioOffsetAlign;
        o->stx_atomic_write_unit_min = s.AtomicWriteUnitMin;
        o->stx_atomic_write_unit_max = s.AtomicWriteUnitMax;
        o->stx_atomic_write_segments_max = s.AtomicWriteSegmentsMax;
        o->stx_atomic_write_unit_max_opt = s.AtomicWriteUnitMaxOpt;
    }

    private static UntornStatxTimestamp Time(Ext4Time t) => new() { tv_sec = t.Seconds, tv_nsec = t.Nanoseconds };
}
