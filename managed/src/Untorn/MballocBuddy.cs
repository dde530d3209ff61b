using System.Numerics;

namespace Untorn;

/// <summary>
/// The buddy view of one block group (mballoc's ext4_buddy): for every order k, one bit per
/// chunk of 2^k clusters that is entirely free. Chunks are aligned in *absolute* cluster numbers —
/// not relative to the group's first cluster — so an order-k chunk is a physically 2^k-aligned run
/// even where groups start one block off (1 KiB blocks, s_first_data_block = 1), the trap the
/// original RFC fell into. Order 0 is the free map itself; higher orders are kept in step on
/// every change. Not thread-safe: Mballoc locks the group around it.
/// </summary>
internal sealed class GroupBuddy
{
    private readonly ulong[][] _free;    // per order: bit i = chunk (First[k] + i) is free
    private readonly ulong[] _firstChunk; // per order: absolute index of the first chunk wholly inside the group
    private readonly long[] _counts;     // per order: number of free chunks

    /// <param name="start">The group's first cluster, absolute.</param>
    /// <param name="length">Clusters in the group.</param>
    /// <param name="usedBitmap">On-disk convention: bit set = cluster in use; bits past <paramref name="length"/> ignored.</param>
    public GroupBuddy(ulong start, uint length, ReadOnlySpan<byte> usedBitmap)
    {
        Start = start;
        Length = length;
        MaxOrder = length == 0 ? 0 : BitOperations.Log2(length);
        _free = new ulong[MaxOrder + 1][];
        _firstChunk = new ulong[MaxOrder + 1];
        _counts = new long[MaxOrder + 1];
        for (int k = 0; k <= MaxOrder; k++)
        {
            ulong first = (start + (1UL << k) - 1) >> k, end = (start + length) >> k;
            _firstChunk[k] = first;
            _free[k] = new ulong[(Math.Max(end, first) - first + 63) / 64];
        }
        for (uint c = 0; c < length; c++)
            if ((usedBitmap[(int)(c >> 3)] & (1 << (int)(c & 7))) == 0) SetBit(0, c, true);
        Rebuild(start, start + length);
    }

    public ulong Start { get; }
    public uint Length { get; }
    public int MaxOrder { get; }
    public ulong End => Start + Length;

    /// <summary>Free clusters in the group.</summary>
    public long FreeCount => _counts[0];

    /// <summary>Free, absolutely aligned chunks of order k.</summary>
    public long FreeChunks(int k) => k <= MaxOrder ? _counts[k] : 0;

    /// <summary>The highest order with a free chunk, or -1 when the group is full.</summary>
    public int LargestFreeOrder
    {
        get
        {
            for (int k = MaxOrder; k >= 0; k--)
                if (_counts[k] > 0) return k;
            return -1;
        }
    }

    public bool IsFree(ulong cluster) => Get(0, cluster - _firstChunk[0]);

    /// <summary>True when every cluster of [first, first + count) is free.</summary>
    public bool IsFreeRun(ulong first, ulong count) =>
        first >= Start && first + count <= End && FirstUsed(first, count) == ulong.MaxValue;

    /// <summary>Marks [first, first + count) used (or free) and updates every order.</summary>
    public void Mark(ulong first, ulong count, bool used)
    {
        if (first < Start || first + count > End) throw new ArgumentOutOfRangeException(nameof(first));
        for (ulong c = first; c < first + count; c++) SetBit(0, c - _firstChunk[0], !used);
        Rebuild(first, first + count);
    }

    /// <summary>
    /// The first start s (scanning from <paramref name="from"/>, wrapping within the group) with
    /// s a multiple of <paramref name="align"/> and [s, s + count) free; null when the group has none.
    /// Complete: every aligned position is considered; used clusters let the scan jump ahead.
    /// </summary>
    public ulong? FindAligned(ulong count, ulong align, ulong from)
    {
        if (count == 0 || count > Length) return null;
        // Fast path: a request that is itself a power-of-two chunk at least as aligned as asked.
        if (BitOperations.IsPow2(count) && count >= align)
        {
            int k = BitOperations.Log2(count);
            if (k <= MaxOrder && _counts[k] > 0 && FindChunk(k, from) is { } chunk) return chunk;
        }
        from = Math.Clamp(from, Start, End);
        return Scan(count, align, from, End) ?? Scan(count, align, Start, from);
    }

    /// <summary>The longest free run starting at or after <paramref name="from"/> (wrapping), capped at <paramref name="max"/>.</summary>
    public (ulong Start, ulong Length)? FindLongest(ulong max, ulong from)
    {
        (ulong, ulong)? best = null;
        from = Math.Clamp(from, Start, End);
        foreach (var (lo, hi) in new[] { (from, End), (Start, from) })
        {
            for (ulong c = lo; c < hi;)
            {
                if (!IsFree(c)) { c++; continue; }
                ulong s = c;
                while (c < End && c - s < max && IsFree(c)) c++;
                if (best is not { } b || c - s > b.Item2) best = (s, c - s);
                if (c - s >= max) return best;
            }
        }
        return best;
    }

    private ulong? Scan(ulong count, ulong align, ulong lo, ulong hi)
    {
        ulong s = (lo + align - 1) / align * align;
        while (s + count <= End && s < hi)
        {
            ulong used = FirstUsed(s, count);
            if (used == ulong.MaxValue) return s;
            s = (used / align + 1) * align;
        }
        return null;
    }

    // The first used cluster in [first, first + count), or ulong.MaxValue when all are free.
    private ulong FirstUsed(ulong first, ulong count)
    {
        ulong end = Math.Min(first + count, End);
        if (first < Start) return first;
        for (ulong c = first; c < end;)
        {
            ulong idx = c - _firstChunk[0];
            ulong word = _free[0][idx >> 6] >> (int)(idx & 63);
            int avail = (int)Math.Min(64 - (idx & 63), end - c);
            ulong mask = avail == 64 ? ulong.MaxValue : (1UL << avail) - 1;
            ulong usedBits = ~word & mask;
            if (usedBits != 0) return c + (ulong)BitOperations.TrailingZeroCount(usedBits);
            c += (ulong)avail;
        }
        return ulong.MaxValue;
    }

    private ulong? FindChunk(int k, ulong from)
    {
        var words = _free[k];
        ulong first = _firstChunk[k];
        ulong startIdx = from >> k >= first ? Math.Min((from >> k) - first, (ulong)words.Length * 64) : 0;
        for (int pass = 0; pass < 2; pass++)
        {
            ulong lo = pass == 0 ? startIdx : 0, hi = pass == 0 ? (ulong)words.Length * 64 : startIdx;
            for (ulong i = lo; i < hi;)
            {
                ulong w = words[i >> 6] >> (int)(i & 63);
                if (w != 0)
                {
                    ulong idx = i + (ulong)BitOperations.TrailingZeroCount(w);
                    if (idx < hi) return (first + idx) << k;
                    break;
                }
                i = (i | 63) + 1;
            }
        }
        return null;
    }

    private bool ChunkFree(int k, ulong cluster)
    {
        ulong chunk = cluster >> k;
        if (chunk < _firstChunk[k]) return false;
        ulong idx = chunk - _firstChunk[k];
        return idx < (ulong)_free[k].Length * 64 && Get(k, idx);
    }

    // Recomputes orders 1..MaxOrder for the chunks covering [lo, hi).
    private void Rebuild(ulong lo, ulong hi)
    {
        for (int k = 1; k <= MaxOrder; k++)
        {
            ulong first = _firstChunk[k], end = (Start + Length) >> k;
            ulong from = Math.Max(lo >> k, first), to = Math.Min((hi + (1UL << k) - 1) >> k, end);
            for (ulong chunk = from; chunk < to; chunk++)
            {
                bool free = ChunkFree(k - 1, chunk << k) && ChunkFree(k - 1, (chunk << k) + (1UL << (k - 1)));
                SetBit(k, chunk - first, free);
            }
        }
    }

    private bool Get(int k, ulong idx) => (_free[k][idx >> 6] & (1UL << (int)(idx & 63))) != 0;

    private void SetBit(int k, ulong idx, bool free)
    {
        ref ulong w = ref _free[k][idx >> 6];
        ulong bit = 1UL << (int)(idx & 63);
        bool was = (w & bit) != 0;
        if (was == free) return;
        if (free) { w |= bit; _counts[k]++; }
        else { w &= ~bit; _counts[k]--; }
    }
}
