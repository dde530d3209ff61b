namespace Untorn;

/// <summary>Linux open(2) flag values (x86-64).</summary>
public static class OpenFlags
{
    public const int RdOnly = 0, WrOnly = 1, RdWr = 2, AccMode = 3, Creat = 0x40, Excl = 0x80, NoCtty = 0x100,
        Trunc = 0x200, Append = 0x400, NonBlock = 0x800, DSync = 0x1000, Direct = 0x4000, LargeFile = 0x8000,
        Directory = 0x10000, NoFollow = 0x20000, NoAtime = 0x40000, CloExec = 0x80000, Sync = 0x101000,
        Path = 0x200000, TmpFile = 0x410000;
}

/// <summary>An open file description: the inode, the open flags and the position.</summary>
internal sealed class OpenFile(Inode inode, int flags)
{
    public Inode Inode { get; } = inode;
    public int Flags { get; } = flags;
    /// <summary>File position (read/write offset, or readdir cookie for directories).</summary>
    public long Position;
    public readonly Lock PositionLock = new();

    public bool CanRead => (Flags & OpenFlags.Path) == 0 && (Flags & OpenFlags.AccMode) != OpenFlags.WrOnly;
    public bool IsPathOnly => (Flags & OpenFlags.Path) != 0;
}

/// <summary>The descriptor table of one opened image: lowest free number first, as Linux allocates.</summary>
internal sealed class OpenFileTable
{
    private const int MaxFiles = 1 << 20;
    private readonly Lock _lock = new();
    private readonly List<OpenFile?> _files = [];

    public int Add(OpenFile file)
    {
        lock (_lock)
        {
            int fd = _files.IndexOf(null);
            if (fd >= 0) { _files[fd] = file; return fd; }
            if (_files.Count >= MaxFiles) throw new Ext4Exception(Errno.EMFILE, "too many open files");
            _files.Add(file);
            return _files.Count - 1;
        }
    }

    /// <summary>Whether any descriptor refers to inode <paramref name="ino"/>.</summary>
    public bool IsOpen(uint ino)
    {
        lock (_lock) return _files.Any(f => f != null && f.Inode.Number == ino);
    }

    public OpenFile Get(int fd)
    {
        lock (_lock)
        {
            if (fd < 0 || fd >= _files.Count || _files[fd] is not { } f)
                throw new Ext4Exception(Errno.EBADF, $"bad file descriptor {fd}");
            return f;
        }
    }

    public void Remove(int fd)
    {
        lock (_lock)
        {
            if (fd < 0 || fd >= _files.Count || _files[fd] == null)
                throw new Ext4Exception(Errno.EBADF, $"bad file descriptor {fd}");
            _files[fd] = null;
        }
    }

    public void CloseAll()
    {
        lock (_lock) _files.Clear();
    }
}
