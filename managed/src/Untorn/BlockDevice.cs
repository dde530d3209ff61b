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
    }

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

    public void Flush()
    {
        if (!IsReadOnly) RandomAccess.FlushToDisk(_handle);
    }

    public void Dispose() => _handle.Dispose();

    private const ulong BlkGetSize64 = 0x80081272;

    [System.Runtime.InteropServices.DllImport("libc.so.6", SetLastError = true)]
    private static extern int ioctl(SafeFileHandle fd, ulong request, out ulong value);

    private static long BlockDeviceSize(SafeFileHandle handle) =>
        ioctl(handle, BlkGetSize64, out ulong size) == 0 ? (long)size : 0;
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
