namespace Untorn;

/// <summary>*at() flags and the root directory descriptor (Linux values).</summary>
public static class AtFlags
{
    /// <summary>dirfd meaning "the image root" (the value of AT_FDCWD).</summary>
    public const int Root = -100;
    public const int SymlinkNoFollow = 0x100, NoAutomount = 0x800, EmptyPath = 0x1000,
        StatxForceSync = 0x2000, StatxDontSync = 0x4000, StatxSyncType = 0x6000;
}

/// <summary>pwritev2/preadv2 RWF_* flags.</summary>
public static class RwfFlags
{
    public const int HiPri = 0x1, DSync = 0x2, Sync = 0x4, NoWait = 0x8, Append = 0x10, NoAppend = 0x20,
        Atomic = 0x40, DontCache = 0x80, Supported = 0xff;
}

/// <summary>One buffer of a vectored call, with its address (for direct-I/O alignment checks).</summary>
public readonly record struct IoSegment(ulong Address, Memory<byte> Buffer);

// The POSIX-shaped calls the C ABI forwards to: descriptors, reads, statx, readdir, readlink.
public sealed partial class Ext4Fs
{
    private const int UioMaxIov = 1024;
    private const long MaxRwCount = int.MaxValue & ~4095L; // MAX_RW_COUNT: one call moves at most this

    public int Open(ReadOnlySpan<byte> path, int flags, uint mode) => Open(path, flags, mode, 0);

    private int Open(ReadOnlySpan<byte> path, int flags, uint mode, int links)
    {
        _ = mode; // only meaningful with O_CREAT, which the write engine adds
        int acc = flags & OpenFlags.AccMode;
        if (acc == OpenFlags.AccMode) throw new Ext4Exception(Errno.EINVAL, "invalid access mode");
        if ((flags & OpenFlags.TmpFile) == OpenFlags.TmpFile && (flags & OpenFlags.Path) == 0)
            throw new Ext4Exception(ReadOnly ? Errno.EROFS : Errno.EOPNOTSUPP, "O_TMPFILE is not supported");
        bool pathOnly = (flags & OpenFlags.Path) != 0;
        // O_CREAT|O_EXCL never follows a final symlink: an existing link is EEXIST wherever it points
        bool follow = (flags & OpenFlags.NoFollow) == 0
            && (flags & (OpenFlags.Creat | OpenFlags.Excl)) != (OpenFlags.Creat | OpenFlags.Excl);
        Inode inode;
        try
        {
            inode = Namei.Resolve(this, ReadInode(RootIno), path, follow);
        }
        catch (Ext4Exception e) when (e.Errno == Errno.ENOENT && (flags & OpenFlags.Creat) != 0 && !pathOnly)
        {
            if (ReadOnly) throw new Ext4Exception(Errno.EROFS, "read-only image");
            if (path.Length > 0 && path[^1] == (byte)'/') throw new Ext4Exception(Errno.EISDIR, "O_CREAT of a name ending in /");
            if (follow && DanglingLinkTarget(path) is { } target)
            {
                // the kernel follows a final symlink that points nowhere and creates what it names
                if (++links > Namei.MaxSymlinks) throw new Ext4Exception(Errno.ELOOP, "too many levels of symbolic links");
                return Open(target, flags, mode, links);
            }
            inode = ReadInode(Create(path, mode, exclusive: (flags & OpenFlags.Excl) != 0));
            return Files.Add(new OpenFile(inode, flags));
        }
        if (!pathOnly)
        {
            if ((flags & OpenFlags.Creat) != 0 && (flags & OpenFlags.Excl) != 0)
                throw new Ext4Exception(Errno.EEXIST, "file exists");
            if (inode.IsSymlink) throw new Ext4Exception(Errno.ELOOP, "O_NOFOLLOW and the path is a symbolic link");
            if ((flags & OpenFlags.Directory) != 0 && !inode.IsDir) throw new Ext4Exception(Errno.ENOTDIR, "not a directory");
            bool writes = acc != OpenFlags.RdOnly || (flags & OpenFlags.Trunc) != 0;
            if (inode.IsDir && (acc != OpenFlags.RdOnly || (flags & OpenFlags.Creat) != 0))
                throw new Ext4Exception(Errno.EISDIR, "is a directory");
            if (writes && ReadOnly) throw new Ext4Exception(Errno.EROFS, "read-only image");
            if ((flags & OpenFlags.Trunc) != 0 && inode.IsRegular && inode.Size != 0)
            {
                if (!inode.HasExtents || inode.HasInlineData)
                    throw new Ext4Exception(Errno.EOPNOTSUPP, "truncating inline or indirect-mapped files is not supported yet");
                Truncate(inode.Number, 0);
                inode = ReadInode(inode.Number);
            }
            if ((flags & OpenFlags.Direct) != 0 && inode.IsRegular && Getattr.DioAlignment(this, inode) == 0)
                throw new Ext4Exception(Errno.EINVAL, "O_DIRECT is not supported on this file");
        }
        else if ((flags & OpenFlags.Directory) != 0 && !inode.IsDir)
            throw new Ext4Exception(Errno.ENOTDIR, "not a directory");
        return Files.Add(new OpenFile(inode, flags));
    }

    // The path of what a final symlink names (relative to the link's directory), or null when the
    // path does not end in a symlink.
    private byte[]? DanglingLinkTarget(ReadOnlySpan<byte> path)
    {
        Inode link;
        try { link = Namei.Resolve(this, ReadInode(RootIno), path, followLast: false); }
        catch (Ext4Exception) { return null; }
        if (!link.IsSymlink) return null;
        var target = ReadLinkTarget(link);
        if (target.Length > 0 && target[0] == (byte)'/') return target;
        return [.. SplitLast(path).Parent, (byte)'/', .. target];
    }

    public void Close(int fd)
    {
        uint ino = Files.Get(fd).Inode.Number;
        Files.Remove(fd);
        if (!ReadOnly) ReleaseIfUnlinked(ino);
    }

    /// <summary>pread(2): bytes read, 0 at end of file.</summary>
    public int Pread(int fd, Span<byte> buffer, long offset, ulong bufferAddress = 0)
    {
        var f = ReadableFile(fd);
        if (offset < 0) throw new Ext4Exception(Errno.EINVAL, "negative offset");
        if (buffer.IsEmpty) return 0;
        CheckDirect(f, offset, buffer.Length, bufferAddress);
        if (buffer.Length > MaxRwCount) buffer = buffer[..(int)MaxRwCount];
        return ReadData(Current(f), buffer, offset);
    }

    // A writable image's files change under their descriptors: read the inode as it is now.
    private Inode Current(OpenFile f) => ReadOnly ? f.Inode : ReadInode(f.Inode.Number);

    /// <summary>preadv2(2): offset -1 uses and advances the file position.</summary>
    public long Preadv2(int fd, ReadOnlySpan<IoSegment> iov, long offset, int flags)
    {
        var f = ReadableFile(fd);
        if (iov.Length > UioMaxIov) throw new Ext4Exception(Errno.EINVAL, "too many iovecs");
        long total = 0;
        foreach (var s in iov) total += s.Buffer.Length;
        if (offset < -1) throw new Ext4Exception(Errno.EINVAL, "negative offset");
        if (total == 0) return 0;
        CheckRwFlags(flags, write: false);
        bool usePosition = offset == -1;
        lock (f.PositionLock)
        {
            long pos = usePosition ? f.Position : offset;
            long done = 0;
            var inode = Current(f);
            foreach (var s in iov)
            {
                if (s.Buffer.IsEmpty) continue;
                CheckDirect(f, pos + done, s.Buffer.Length, s.Address);
                int n = ReadData(inode, s.Buffer.Span, pos + done);
                done += n;
                if (n < s.Buffer.Length || done >= MaxRwCount) break;
            }
            if (usePosition) f.Position = pos + done;
            return done;
        }
    }

    /// <summary>kiocb_set_rw_flags: which RWF_* combinations a call accepts.</summary>
    internal static void CheckRwFlags(int flags, bool write)
    {
        if ((flags & ~RwfFlags.Supported) != 0) throw new Ext4Exception(Errno.EOPNOTSUPP, $"unknown RWF flags 0x{flags & ~RwfFlags.Supported:x}");
        if ((flags & RwfFlags.Append) != 0 && (flags & RwfFlags.NoAppend) != 0)
            throw new Ext4Exception(Errno.EINVAL, "RWF_APPEND with RWF_NOAPPEND");
        if ((flags & RwfFlags.Atomic) != 0 && !write)
            throw new Ext4Exception(Errno.EOPNOTSUPP, "RWF_ATOMIC is for writes");
    }

    private OpenFile ReadableFile(int fd)
    {
        var f = Files.Get(fd);
        if (!f.CanRead) throw new Ext4Exception(Errno.EBADF, "descriptor not open for reading");
        if (f.Inode.IsDir) throw new Ext4Exception(Errno.EISDIR, "is a directory");
        if (!f.Inode.IsRegular && !f.Inode.IsSymlink) throw new Ext4Exception(Errno.EINVAL, "not a regular file");
        return f;
    }

    // Direct I/O: file offset, length and buffer address aligned to what statx reports.
    private void CheckDirect(OpenFile f, long offset, long length, ulong address)
    {
        if ((f.Flags & OpenFlags.Direct) == 0) return;
        uint align = Getattr.DioAlignment(this, f.Inode);
        if (align == 0 || offset % align != 0 || length % align != 0 || address % align != 0)
            throw new Ext4Exception(Errno.EINVAL, $"direct I/O needs {align}-byte aligned offset, length and buffer");
    }

    /// <summary>statx(2) relative to <paramref name="dirfd"/> (AtFlags.Root or a descriptor).</summary>
    public StatxData Statx(int dirfd, ReadOnlySpan<byte> path, int flags, uint mask)
    {
        const int valid = AtFlags.SymlinkNoFollow | AtFlags.NoAutomount | AtFlags.EmptyPath | AtFlags.StatxSyncType;
        if ((flags & ~valid) != 0 || (flags & AtFlags.StatxSyncType) == AtFlags.StatxSyncType)
            throw new Ext4Exception(Errno.EINVAL, "invalid statx flags");
        if ((mask & StatxMask.Reserved) != 0) throw new Ext4Exception(Errno.EINVAL, "reserved statx mask bit");
        var inode = ResolveAt(dirfd, path, flags);
        return Getattr.Fill(this, inode, mask);
    }

    private Inode ResolveAt(int dirfd, ReadOnlySpan<byte> path, int flags)
    {
        bool follow = (flags & AtFlags.SymlinkNoFollow) == 0;
        if (path.IsEmpty)
        {
            if ((flags & AtFlags.EmptyPath) == 0) throw new Ext4Exception(Errno.ENOENT, "empty path");
            return dirfd == AtFlags.Root ? ReadInode(RootIno) : ReadInode(Files.Get(dirfd).Inode.Number);
        }
        Inode start;
        if (dirfd == AtFlags.Root || path[0] == (byte)'/') start = ReadInode(RootIno);
        else
        {
            start = Files.Get(dirfd).Inode;
            if (!start.IsDir) throw new Ext4Exception(Errno.ENOTDIR, "dirfd is not a directory");
        }
        return Namei.Resolve(this, start, path, follow);
    }

    /// <summary>Up to <paramref name="max"/> entries from the directory's position, advancing it; empty at the end.</summary>
    public List<DirEntry> ReadDir(int fd, int max)
    {
        var f = Files.Get(fd);
        if (f.IsPathOnly) throw new Ext4Exception(Errno.EBADF, "O_PATH descriptor");
        if (!f.Inode.IsDir) throw new Ext4Exception(Errno.ENOTDIR, "not a directory");
        if (max <= 0) throw new Ext4Exception(Errno.EINVAL, "no room for an entry");
        lock (f.PositionLock)
        {
            var entries = Dir.Read(this, f.Inode, f.Position, max);
            if (entries.Count > 0) f.Position = entries[^1].NextPos;
            return entries;
        }
    }

    /// <summary>readlink(2) (no trailing NUL): the target of the link at <paramref name="path"/>.</summary>
    public byte[] ReadLink(int dirfd, ReadOnlySpan<byte> path)
    {
        var inode = ResolveAt(dirfd, path, AtFlags.SymlinkNoFollow | (path.IsEmpty ? AtFlags.EmptyPath : 0));
        if (!inode.IsSymlink) throw new Ext4Exception(Errno.EINVAL, "not a symbolic link");
        return ReadLinkTarget(inode);
    }
}
