using System.Collections.Concurrent;

namespace Untorn;

/// <summary>
/// The device as the engine sees it: the backing store overlaid with the current bytes of every
/// metadata block changed by a transaction and not yet written to its home location (the role
/// buffer heads play for jbd2). Reads of such a block return the new bytes; everything else passes
/// through. Blocks are published whole (copy-on-write), so a concurrent reader sees a block either
/// before or after a change, never half of one.
/// </summary>
internal sealed class BufferCache(IBlockDevice inner, int blockSize) : IBlockDevice
{
    private readonly ConcurrentDictionary<ulong, byte[]> _blocks = new();
    // Odd while a commit writes cached blocks home: a reader that went to the device for a block
    // the commit may be writing retries (a sequence lock), so it never copies half-written bytes.
    private long _homeWrites;

    public IBlockDevice Inner => inner;
    public int BlockSize => blockSize;
    public long Size => inner.Size;
    public bool IsReadOnly => inner.IsReadOnly;
    public int SectorSize => inner.SectorSize;
    public AtomicWriteLimits AtomicWrite => inner.AtomicWrite;

    /// <summary>Blocks whose newest bytes are only here.</summary>
    public int Count => _blocks.Count;

    public void Read(long offset, Span<byte> buffer)
    {
        var spin = new SpinWait();
        while (true)
        {
            long seq = Volatile.Read(ref _homeWrites);
            if ((seq & 1) == 0)
            {
                ReadOverlay(offset, buffer);
                if (Volatile.Read(ref _homeWrites) == seq) return;
            }
            spin.SpinOnce();
        }
    }

    /// <summary>Brackets a commit's or checkpoint's writes of cached blocks to their home locations.</summary>
    public void BeginHomeWrites() => Interlocked.Increment(ref _homeWrites);

    public void EndHomeWrites() => Interlocked.Increment(ref _homeWrites);

    private void ReadOverlay(long offset, Span<byte> buffer)
    {
        if (_blocks.IsEmpty)
        {
            inner.Read(offset, buffer);
            return;
        }
        long end = offset + buffer.Length;
        long pos = offset;
        while (pos < end)
        {
            ulong block = (ulong)(pos / blockSize);
            long blockStart = (long)block * blockSize;
            int inBlock = (int)(pos - blockStart);
            int n = (int)Math.Min(blockSize - inBlock, end - pos);
            var dest = buffer.Slice((int)(pos - offset), n);
            if (_blocks.TryGetValue(block, out var data))
                data.AsSpan(inBlock, n).CopyTo(dest);
            else
                inner.Read(pos, dest);
            pos += n;
        }
    }

    /// <summary>
    /// A write that bypasses the journal (file data) lands on the device. It must not touch a block
    /// whose metadata is still cached: the pending metadata would later be written over it. Freed
    /// metadata is forgotten (and revoked) by the transaction before its blocks are reused for data.
    /// </summary>
    public void Write(long offset, ReadOnlySpan<byte> buffer)
    {
        if (!_blocks.IsEmpty && buffer.Length > 0)
            for (ulong b = (ulong)(offset / blockSize); b <= (ulong)((offset + buffer.Length - 1) / blockSize); b++)
                if (_blocks.ContainsKey(b))
                    throw new InvalidOperationException($"data write over block {b}, which holds uncommitted metadata");
        inner.Write(offset, buffer);
    }

    public void Flush() => inner.Flush();

    /// <summary>The current bytes of a block (cached or from the device), as a private copy.</summary>
    public byte[] Snapshot(ulong block)
    {
        var copy = new byte[blockSize];
        if (_blocks.TryGetValue(block, out var data)) data.CopyTo(copy, 0);
        else inner.Read((long)block * blockSize, copy);
        return copy;
    }

    /// <summary>The cached bytes of a block, or null when the device holds its newest bytes.</summary>
    public byte[]? TryGetCached(ulong block) => _blocks.TryGetValue(block, out var data) ? data : null;

    /// <summary>Makes <paramref name="data"/> the block's current contents for every reader.</summary>
    public void Publish(ulong block, byte[] data)
    {
        if (data.Length != blockSize) throw new ArgumentException("whole blocks only", nameof(data));
        _blocks[block] = data;
    }

    /// <summary>After a checkpoint wrote <paramref name="data"/> home: drop the copy unless it changed since.</summary>
    public void Release(ulong block, byte[] data) =>
        _blocks.TryRemove(new KeyValuePair<ulong, byte[]>(block, data));

    /// <summary>The cached blocks in [first, +count) (a freed run: usually none).</summary>
    public List<ulong> CachedIn(ulong first, ulong count) => count <= (ulong)_blocks.Count
        ? Enumerable.Range(0, (int)count).Select(i => first + (ulong)i).Where(_blocks.ContainsKey).ToList()
        : _blocks.Keys.Where(b => b >= first && b - first < count).ToList();

    /// <summary>Forgets a block (freed metadata that will be reused for data).</summary>
    public void Forget(ulong block) => _blocks.TryRemove(block, out _);

    public void Dispose() => inner.Dispose();
}
