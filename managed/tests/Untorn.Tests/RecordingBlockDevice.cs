namespace Untorn.Tests;

/// <summary>A device that records every write and flush of a workload, for building crash images.</summary>
internal sealed class RecordingBlockDevice(byte[] image) : IBlockDevice
{
    public sealed record Op(long Offset, byte[]? Data); // Data null: a flush

    private readonly MemoryBlockDevice _inner = new(image);
    private readonly Lock _lock = new();
    private int _writes;
    public List<Op> Ops { get; } = [];

    public long Size => _inner.Size;
    public bool IsReadOnly => false;
    public int SectorSize => 512;
    public void Read(long offset, Span<byte> buffer) => _inner.Read(offset, buffer);

    public void Write(long offset, ReadOnlySpan<byte> buffer)
    {
        lock (_lock)
        {
            _inner.Write(offset, buffer);
            Ops.Add(new Op(offset, buffer.ToArray()));
            _writes++;
        }
    }

    public void Flush()
    {
        lock (_lock) Ops.Add(new Op(0, null));
    }

    public int WriteCount
    {
        get { lock (_lock) return _writes; }
    }

    public void Dispose() { }
}

/// <summary>
/// A crash image that shares its bytes: the base image, then a page map of recorded writes shared
/// with other crash images (never changed while this device lives), then this image's own pages
/// (copy-on-write, so recovery writing into it touches nothing shared).
/// </summary>
internal sealed class OverlayBlockDevice(byte[] baseImage, Dictionary<long, byte[]>? shared, bool readOnly = false) : IBlockDevice
{
    public const int PageSize = 4096;
    private readonly Dictionary<long, byte[]> _own = [];

    public long Size => baseImage.Length;
    public bool IsReadOnly => readOnly;
    public int SectorSize => 512;
    public void Flush() { }
    public void Dispose() { }

    public void Read(long offset, Span<byte> buffer)
    {
        if (offset < 0 || offset + buffer.Length > baseImage.Length) throw new Ext4Exception(Errno.EIO, "read past the end");
        while (!buffer.IsEmpty)
        {
            long page = offset / PageSize;
            int at = (int)(offset % PageSize), n = Math.Min(buffer.Length, PageSize - at);
            var src = _own.TryGetValue(page, out var p) || (shared != null && shared.TryGetValue(page, out p))
                ? p.AsSpan(at, n)
                : baseImage.AsSpan((int)offset, n);
            src.CopyTo(buffer);
            buffer = buffer[n..];
            offset += n;
        }
    }

    public void Write(long offset, ReadOnlySpan<byte> buffer)
    {
        if (readOnly) throw new Ext4Exception(Errno.EROFS, "read-only");
        if (offset < 0 || offset + buffer.Length > baseImage.Length) throw new Ext4Exception(Errno.EIO, "write past the end");
        while (!buffer.IsEmpty)
        {
            long page = offset / PageSize;
            int at = (int)(offset % PageSize), n = Math.Min(buffer.Length, PageSize - at);
            if (!_own.TryGetValue(page, out var p))
            {
                p = new byte[PageSize];
                Read(page * PageSize, p);
                _own[page] = p;
            }
            buffer[..n].CopyTo(p.AsSpan(at));
            buffer = buffer[n..];
            offset += n;
        }
    }

    /// <summary>The whole image, for the tools.</summary>
    public byte[] ToArray()
    {
        var img = baseImage.ToArray();
        if (shared != null) foreach (var (page, p) in shared) p.CopyTo(img, page * PageSize);
        foreach (var (page, p) in _own) p.CopyTo(img, page * PageSize);
        return img;
    }

    /// <summary>Applies a write to a shared page map without changing any page array already in it.</summary>
    public static void ApplyShared(Dictionary<long, byte[]> pages, byte[] baseImage, long offset, ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            long page = offset / PageSize;
            int at = (int)(offset % PageSize), n = Math.Min(data.Length, PageSize - at);
            var fresh = pages.TryGetValue(page, out var old) ? old.ToArray() : baseImage.AsSpan((int)(page * PageSize), PageSize).ToArray();
            data[..n].CopyTo(fresh.AsSpan(at));
            pages[page] = fresh;
            data = data[n..];
            offset += n;
        }
    }
}
