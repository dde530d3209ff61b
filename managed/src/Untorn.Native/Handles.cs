using System.Buffers;
using System.Collections.Concurrent;
using System.Runtime.InteropServices;

namespace Untorn.Native;

/// <summary>
/// Live image handles. The pointer a caller holds is a GCHandle's value; it is looked up here on
/// every call, so a closed, stale or made-up pointer is -EBADF and never dereferenced.
/// </summary>
internal static class Handles
{
    private static readonly ConcurrentDictionary<nint, Ext4Fs> Live = new();

    public static unsafe UntornFs* Register(Ext4Fs fs)
    {
        var h = GCHandle.Alloc(fs);
        nint p = GCHandle.ToIntPtr(h);
        Live[p] = fs;
        return (UntornFs*)p;
    }

    public static unsafe Ext4Fs Get(UntornFs* p)
    {
        if (p == null) throw new Ext4Exception(Errno.EFAULT, "NULL image handle");
        if (!Live.TryGetValue((nint)p, out var fs)) throw new Ext4Exception(Errno.EBADF, "not an open image handle");
        return fs;
    }

    public static unsafe Ext4Fs Remove(UntornFs* p)
    {
        if (p == null) throw new Ext4Exception(Errno.EFAULT, "NULL image handle");
        if (!Live.TryRemove((nint)p, out var fs)) throw new Ext4Exception(Errno.EBADF, "not an open image handle");
        GCHandle.FromIntPtr((nint)p).Free();
        return fs;
    }
}

/// <summary>Turns every failure into the -errno the C ABI returns; nothing is thrown across it.</summary>
internal static class ErrnoMapper
{
    public static int Of(Exception e) => -(e switch
    {
        Ext4Exception x => x.Errno,
        ObjectDisposedException => Errno.EBADF,
        OutOfMemoryException => Errno.ENOMEM,
        InsufficientExecutionStackException => Errno.ENOMEM,
        ArgumentException => Errno.EINVAL,
        _ => Errno.EIO,
    });
}

/// <summary>Lets a caller's buffer be handed to the engine as Memory&lt;byte&gt; without copying.</summary>
internal sealed unsafe class NativeBuffer(byte* pointer, int length) : MemoryManager<byte>
{
    public override Span<byte> GetSpan() => new(pointer, length);
    public override MemoryHandle Pin(int elementIndex = 0) => new(pointer + elementIndex);
    public override void Unpin() { }
    protected override void Dispose(bool disposing) { }
}
