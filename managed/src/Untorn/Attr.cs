namespace Untorn;

/// <summary>A utimensat(2) timestamp; a nanoseconds value of <see cref="UtimeNow"/> or <see cref="UtimeOmit"/> is a marker.</summary>
public readonly record struct TimeSpec(long Seconds, long Nanoseconds)
{
    /// <summary>Set the timestamp to the current time (Linux UTIME_NOW).</summary>
    public const long UtimeNow = (1L << 30) - 1;
    /// <summary>Leave the timestamp unchanged (Linux UTIME_OMIT).</summary>
    public const long UtimeOmit = (1L << 30) - 2;
}

// utimensat, fchmodat, fchownat (fs/utimes.c, fs/open.c, fs/attr.c notify_change, ext4_setattr),
// as the kernel does them for root (CAP_FOWNER, CAP_FSETID, CAP_CHOWN): each one metadata handle
// that rewrites the inode with ctime set to now.
public sealed partial class Ext4Fs
{
    private const ushort SetUid = 0x800, SetGid = 0x400, GroupExec = 0x8, PermissionBits = 0xFFF;
    // EXT4_EXTRA_TIMESTAMP_MAX: 2^34 - 1 seconds past S32_MIN, the reach of the two epoch bits.
    private const long ExtraTimestampMax = (1L << 34) - 1 + int.MinValue;

    /// <summary>utimensat(2): times is null (both now) or [atime, mtime]; flags AT_SYMLINK_NOFOLLOW, AT_EMPTY_PATH.</summary>
    public void Utimensat(int dirfd, ReadOnlySpan<byte> path, TimeSpec[]? times, int flags)
    {
        CheckTimesShape(times);
        // The syscall returns before looking at the path or the flags when there is nothing to set.
        if (times is [{ Nanoseconds: TimeSpec.UtimeOmit }, { Nanoseconds: TimeSpec.UtimeOmit }]) return;
        uint ino = ResolveForSetattr(dirfd, path, flags);
        SetTimes(ino, times);
    }

    /// <summary>futimens(2) (utimensat with a NULL path): the file open on <paramref name="fd"/>, which may not be an O_PATH descriptor.</summary>
    public void Futimens(int fd, TimeSpec[]? times)
    {
        CheckTimesShape(times);
        if (times is [{ Nanoseconds: TimeSpec.UtimeOmit }, { Nanoseconds: TimeSpec.UtimeOmit }]) return;
        var f = Files.Get(fd);
        if (f.IsPathOnly) throw new Ext4Exception(Errno.EBADF, "O_PATH descriptor");
        SetTimes(f.Inode.Number, times);
    }

    /// <summary>fchmodat2(2): the permission, set-id and sticky bits (07777); the file type stays.</summary>
    public void Fchmodat(int dirfd, ReadOnlySpan<byte> path, uint mode, int flags)
    {
        uint ino = ResolveForSetattr(dirfd, path, flags);
        Setattr(ino, (b, inode) =>
        {
            if ((inode.Flags & InodeFlags.Append) != 0) throw new Ext4Exception(Errno.EPERM, "append-only file");
            // notify_change: symlink modes are never changed.
            if (inode.IsSymlink) throw new Ext4Exception(Errno.EOPNOTSUPP, "changing the mode of a symbolic link");
            if (Xattr.Has(this, inode, Xattr.PosixAclAccess, []))
                throw new Ext4Exception(Errno.EOPNOTSUPP, "chmod of a file with a POSIX ACL (the ACL would have to follow; not supported yet)");
            b.Mode = (ushort)(b.Mode & ~(uint)PermissionBits | mode & PermissionBits);
        });
    }

    /// <summary>
    /// fchownat(2): uid/gid uint.MaxValue (-1) leave that id unchanged. Like the kernel for every
    /// caller, root included: a non-directory loses S_ISUID, and S_ISGID when group-executable.
    /// </summary>
    public void Fchownat(int dirfd, ReadOnlySpan<byte> path, uint uid, uint gid, int flags)
    {
        uint ino = ResolveForSetattr(dirfd, path, flags);
        Setattr(ino, (b, inode) =>
        {
            ushort mode = b.Mode;
            if (!inode.IsDir)
            {
                mode = (ushort)(mode & ~SetUid);
                if ((mode & GroupExec) != 0) mode = (ushort)(mode & ~SetGid); // setattr_should_drop_sgid for a capable caller
            }
            bool ids = uid != uint.MaxValue || gid != uint.MaxValue;
            if ((inode.Flags & InodeFlags.Append) != 0 && (ids || mode != b.Mode))
                throw new Ext4Exception(Errno.EPERM, "append-only file");
            if (!inode.IsDir && Xattr.Has(this, inode, Xattr.Security, "capability"u8))
                throw new Ext4Exception(Errno.EOPNOTSUPP, "chown of a file with a file capability (the kernel drops it; not supported yet)");
            if (uid != uint.MaxValue) b.Uid = uid;
            if (gid != uint.MaxValue) b.Gid = gid;
            b.Mode = mode;
        });
    }

    private static void CheckTimesShape(TimeSpec[]? times)
    {
        if (times != null && times.Length != 2) throw new ArgumentException("utimensat takes two timestamps", nameof(times));
    }

    private void SetTimes(uint ino, TimeSpec[]? times)
    {
        if (times != null)
        {
            foreach (var t in times)
                if (t.Nanoseconds is not (TimeSpec.UtimeNow or TimeSpec.UtimeOmit) && (ulong)t.Nanoseconds > 999_999_999)
                    throw new Ext4Exception(Errno.EINVAL, $"invalid nanoseconds {t.Nanoseconds}");
            if (times[0].Nanoseconds == TimeSpec.UtimeNow && times[1].Nanoseconds == TimeSpec.UtimeNow) times = null;
        }
        Setattr(ino, (b, inode) =>
        {
            // Explicit times (ATTR_TIMES_SET) are refused on append-only files; "touch" (both now) is not.
            if (times != null && (inode.Flags & InodeFlags.Append) != 0) throw new Ext4Exception(Errno.EPERM, "append-only file");
            var now = DateTimeOffset.UtcNow;
            for (int i = 0; i < 2; i++)
            {
                var (secOff, extraOff) = i == 0 ? (0x08, 0x8C) : (0x10, 0x88);
                var t = times?[i] ?? new TimeSpec(0, TimeSpec.UtimeNow);
                if (t.Nanoseconds == TimeSpec.UtimeOmit) continue;
                if (t.Nanoseconds == TimeSpec.UtimeNow) b.SetTime(secOff, extraOff, now);
                else
                {
                    var (sec, nsec) = TruncateTime(t);
                    b.SetTime(secOff, extraOff, sec, nsec);
                }
            }
        });
    }

    // timestamp_truncate with ext4's limits: s_time_min S32_MIN; s_time_max the epoch bits' reach,
    // or S32_MAX with 128-byte inodes, whose granularity is one second; nanoseconds drop at a limit.
    private (long Seconds, uint Nanoseconds) TruncateTime(TimeSpec t)
    {
        bool extra = Super.InodeSize > Inode.GoodOldSize;
        long max = extra ? ExtraTimestampMax : int.MaxValue;
        long sec = Math.Clamp(t.Seconds, int.MinValue, max);
        uint nsec = !extra || sec == int.MinValue || sec == max ? 0 : (uint)t.Nanoseconds;
        return (sec, nsec);
    }

    // Lookup errors come first, then EROFS (the kernel resolves the path before mnt_want_write).
    private uint ResolveForSetattr(int dirfd, ReadOnlySpan<byte> path, int flags)
    {
        if ((flags & ~(AtFlags.SymlinkNoFollow | AtFlags.EmptyPath)) != 0) throw new Ext4Exception(Errno.EINVAL, "invalid flags");
        return ResolveAt(dirfd, path, flags).Number;
    }

    // ext4_setattr: one handle; immutable inodes refuse every change; ctime becomes now.
    private void Setattr(uint ino, Action<InodeBuffer, Inode> change)
    {
        if (ReadOnly) throw new Ext4Exception(Errno.EROFS, "read-only image");
        var ws = Writer;
        using var h = ws.Transactions.Start();
        var b = InodeBuffer.Load(this, ino);
        var inode = b.Parsed;
        // Resolved before the handle: the file may have lost its last name and descriptor since.
        if (inode.Mode == 0 || inode.LinksCount == 0 && !Files.IsOpen(ino)) throw new Ext4Exception(Errno.ENOENT, "file was removed");
        if ((inode.Flags & InodeFlags.Immutable) != 0) throw new Ext4Exception(Errno.EPERM, "immutable file");
        change(b, inode);
        b.SetTime(0x0C, 0x84, DateTimeOffset.UtcNow);
        b.Save(h, this);
        h.Complete();
    }
}
