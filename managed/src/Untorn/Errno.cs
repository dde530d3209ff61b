namespace Untorn;

/// <summary>Linux x86-64 errno values. The engine reports every failure as one of these.</summary>
public static class Errno
{
    public const int EPERM = 1, ENOENT = 2, EIO = 5, EBADF = 9, EAGAIN = 11, ENOMEM = 12, EACCES = 13,
        EFAULT = 14, EBUSY = 16, EEXIST = 17, EXDEV = 18, ENOTDIR = 20, EISDIR = 21, EINVAL = 22,
        EMFILE = 24, EFBIG = 27, ENOSPC = 28, EROFS = 30, EMLINK = 31, ERANGE = 34, ENAMETOOLONG = 36,
        ENOTEMPTY = 39, ELOOP = 40, ENODATA = 61, EBADMSG = 74, EOVERFLOW = 75, EOPNOTSUPP = 95,
        EUCLEAN = 117;

    /// <summary>ext4 spells "structure needs cleaning" EFSCORRUPTED and a bad checksum EFSBADCRC.</summary>
    public const int EFSCORRUPTED = EUCLEAN, EFSBADCRC = EBADMSG;

    /// <summary>The strerror(3) text glibc gives for each value we produce.</summary>
    public static string Describe(int errno) => Math.Abs(errno) switch
    {
        0 => "Success",
        EPERM => "Operation not permitted",
        ENOENT => "No such file or directory",
        EIO => "Input/output error",
        EBADF => "Bad file descriptor",
        EAGAIN => "Resource temporarily unavailable",
        ENOMEM => "Cannot allocate memory",
        EACCES => "Permission denied",
        EFAULT => "Bad address",
        EBUSY => "Device or resource busy",
        EEXIST => "File exists",
        EXDEV => "Invalid cross-device link",
        ENOTDIR => "Not a directory",
        EISDIR => "Is a directory",
        EINVAL => "Invalid argument",
        EMFILE => "Too many open files",
        EFBIG => "File too large",
        ENOSPC => "No space left on device",
        EROFS => "Read-only file system",
        EMLINK => "Too many links",
        ERANGE => "Numerical result out of range",
        ENAMETOOLONG => "File name too long",
        ENOTEMPTY => "Directory not empty",
        ELOOP => "Too many levels of symbolic links",
        ENODATA => "No data available",
        EBADMSG => "Bad message",
        EOVERFLOW => "Value too large for defined data type",
        EOPNOTSUPP => "Operation not supported",
        EUCLEAN => "Structure needs cleaning",
        var e => $"Unknown error {e}",
    };
}

/// <summary>A failure inside the engine, carrying the Linux errno the C ABI returns negated.</summary>
public sealed class Ext4Exception(int errno, string message) : IOException(message)
{
    public int Errno { get; } = errno;

    public static Ext4Exception Corrupted(string what) => new(Untorn.Errno.EUCLEAN, "corrupted filesystem: " + what);
    public static Ext4Exception BadChecksum(string what) => new(Untorn.Errno.EUCLEAN, "checksum mismatch: " + what) { IsBadChecksum = true };

    /// <summary>The structure was intact but for its checksum (EFSBADCRC in the kernel; EUCLEAN to callers).</summary>
    public bool IsBadChecksum { get; private init; }
}
