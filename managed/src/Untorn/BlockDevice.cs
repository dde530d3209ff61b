using Microsoft.Win32.SafeHandles;

namespace Untorn;

/// <summary>
/// The backing store of an image: positional reads and writes, a durability barrier, and the
/// device's own atomic-write capability. Implementations must be safe for concurrent callers.
/// </summary>
public interface IBlockDevice : IDisposable
{
    long Size { get; }
    bool IsReadOnly { get; }
    /// <summary>Logical sector size: the unit of direct I/O alignment and of torn writes.</summary>
    int SectorSize { get; }
    /// <summary>Reads exactly buffer.Length bytes at offset; a read past the end is EIO.</summary>
    void Read(long offset, Span<byte> buffer);
    void Write(long offset, ReadOnlySpan<byte> buffer);
    void Flush();
    /// <summary>What the backing store itself writes untorn (none unless it says so).</summary>
    AtomicWriteLimits AtomicWrite => AtomicWriteLimits.None;
}

/// <summary>
/// A device's atomic write unit range in bytes, as Linux statx(STATX_WRITE_ATOMIC) reports it for the
/// backing file: writes of a power-of-two size in [UnitMin, UnitMax], naturally aligned, are untorn.
/// </summary>
public readonly record struct AtomicWriteLimits(uint UnitMin, uint UnitMax, uint SegmentsMax)
{
    public static AtomicWriteLimits None => default;
    public bool Supported => UnitMin != 0 && UnitMax >= UnitMin;
}

/// <summary>An image file or block device opened through the OS.</summary>
public sealed class FileBlockDevice : IBlockDevice
{
    private readonly SafeFileHandle _handle;

    public FileBlockDevice(string path, bool readOnly)
    {
        IsReadOnly = readOnly;
        try
        {
            _handle = File.OpenHandle(path, FileMode.Open, readOnly ? FileAccess.Read : FileAccess.ReadWrite,
                FileShare.ReadWrite);
        }
        catch (FileNotFoundException e) { throw new Ext4Exception(Errno.ENOENT, e.Message); }
        catch (DirectoryNotFoundException e) { throw new Ext4Exception(Errno.ENOENT, e.Message); }
        catch (UnauthorizedAccessException e) { throw new Ext4Exception(readOnly ? Errno.EACCES : Errno.EROFS, e.Message); }
        catch (IOException e) { throw new Ext4Exception(Errno.EIO, e.Message); }
        Size = RandomAccess.GetLength(_handle);
        if (Size == 0) // a block device: stat reports no length, the BLKGETSIZE64 ioctl does
            Size = BlockDeviceSize(_handle);
        AtomicWrite = HostAtomicWrite(_handle);
    }

    public AtomicWriteLimits AtomicWrite { get; }

    public long Size { get; }
    public bool IsReadOnly { get; }
    public int SectorSize => 512;

    public void Read(long offset, Span<byte> buffer)
    {
        if (offset < 0 || offset + buffer.Length > Size)
            throw new Ext4Exception(Errno.EIO, $"read of {buffer.Length} bytes at {offset} is past the end of the device ({Size})");
        int done = 0;
        while (done < buffer.Length)
        {
            int n = RandomAccess.Read(_handle, buffer[done..], offset + done);
            if (n <= 0) throw new Ext4Exception(Errno.EIO, $"short read at {offset + done}");
            done += n;
        }
    }

    public void Write(long offset, ReadOnlySpan<byte> buffer)
    {
        if (IsReadOnly) throw new Ext4Exception(Errno.EROFS, "device opened read-only");
        if (offset < 0 || offset + buffer.Length > Size)
            throw new Ext4Exception(Errno.EIO, $"write of {buffer.Length} bytes at {offset} is past the end of the device");
        RandomAccess.Write(_handle, buffer, offset);
    }

    /// <summary>
    /// fdatasync(2): the written bytes, and whatever the host needs to find them (blocks it
    /// allocated under a sparse image), are durable. Not fsync: the image file's own timestamps
    /// are not worth a host journal commit per flush.
    /// </summary>
    public void Flush()
    {
        if (IsReadOnly) return;
        if (fdatasync(_handle) != 0)
            throw new Ext4Exception(Errno.EIO, $"fdatasync of the image failed (errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()})");
    }

    public void Dispose() => _handle.Dispose();

    [System.Runtime.InteropServices.DllImport("libc.so.6", SetLastError = true)]
    private static extern int fdatasync(SafeFileHandle fd);

    private const ulong BlkGetSize64 = 0x80081272;

    [System.Runtime.InteropServices.DllImport("libc.so.6", SetLastError = true)]
    private static extern int ioctl(SafeFileHandle fd, ulong request, out ulong value);

    private static long BlockDeviceSize(SafeFileHandle handle) =>
        ioctl(handle, BlkGetSize64, out ulong size) == 0 ? (long)size : 0;

    private const int AtEmptyPath = 0x1000;
    private const uint StatxWriteAtomic = 0x10000;

    [System.Runtime.InteropServices.DllImport("libc.so.6", SetLastError = true)]
    private static extern int statx(SafeFileHandle dirfd, [System.Runtime.InteropServices.MarshalAs(System.Runtime.InteropServices.UnmanagedType.LPUTF8Str)] string path,
        int flags, uint mask, byte[] statxbuf);

    /// <summary>
    /// The host's own untorn-write range for this file or device (e.g. XFS with reflink serves
    /// software atomic writes; NVMe reports AWUPF). Kernels or libcs without it report none.
    /// </summary>
    private static AtomicWriteLimits HostAtomicWrite(SafeFileHandle handle)
    {
        var buf = new byte[256];
        try
        {
            if (statx(handle, "", AtEmptyPath, StatxWriteAtomic, buf) != 0) return AtomicWriteLimits.None;
        }
        catch (EntryPointNotFoundException) { return AtomicWriteLimits.None; }
        var v = new LeView(buf);
        if ((v.U32(0x00) & StatxWriteAtomic) == 0) return AtomicWriteLimits.None;
        return new AtomicWriteLimits(v.U32(0xA8), v.U32(0xAC), v.U32(0xB0));
    }
}

/// <summary>An image held in memory (tests, fuzzing).</summary>
public sealed class MemoryBlockDevice(byte[] image, bool readOnly = false) : IBlockDevice
{
    public byte[] Image { get; } = image;
    public long Size => Image.Length;
    public bool IsReadOnly { get; } = readOnly;
    public int SectorSize => 512;

    public void Read(long offset, Span<byte> buffer)
    {
        if (offset < 0 || offset + buffer.Length > Image.Length)
            throw new Ext4Exception(Errno.EIO, $"read of {buffer.Length} bytes at {offset} is past the end of the device");
        Image.AsSpan((int)offset, buffer.Length).CopyTo(buffer);
    }

    public void Write(long offset, ReadOnlySpan<byte> buffer)
    {
        if (IsReadOnly) throw new Ext4Exception(Errno.EROFS, "device opened read-only");
        if (offset < 0 || offset + buffer.Length > Image.Length)
            throw new Ext4Exception(Errno.EIO, "write past the end of the device");
        buffer.CopyTo(Image.AsSpan((int)offset));
    }

    public void Flush() { }
    public void Dispose() { }
}
