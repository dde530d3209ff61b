using System.Numerics;

namespace Untorn;

/// <summary>
/// The buddy view of one block group (mballoc's ext4_buddy): for every order k, one bit per
/// chunk of 2^k clusters that is entirely free. Chunks are aligned in *absolute* cluster numbers —
/// not relative to the group's first cluster — so an order-k chunk is a physically 2^k-aligned run
/// even where groups start one block off (1 KiB blocks, s_first_data_block = 1), the trap the
/// original RFC fell into. Order 0 is the free map itself; higher orders are kept in step on
/// every change, a 64-bit word at a time. Not thread-safe: Mballoc locks the group around it.
/// </summary>
internal sealed class GroupBuddy
{
    // Every order's words in one array, order k at [_start[k], _start[k + 1]): bit i of order k =
    // absolute chunk (_base >> k) + i is wholly free. One array keeps the small high orders on a
    // few cache lines, so a change that climbs all orders touches few lines of a cold group.
    private readonly ulong[] _words;
    private readonly int[] _start;
    private readonly long[] _counts;  // per order: number of free chunks
    // The group's start rounded down to 2^MaxOrder: every order's bit i then pairs with bits 2i and
    // 2i+1 of the order below, so a word of order k is built from two words of order k-1.
    private readonly ulong _base;

    /// <param name="start">The group's first cluster, absolute.</param>
    /// <param name="length">Clusters in the group.</param>
    /// <param name="usedBitmap">On-disk convention: bit set = cluster in use; bits past <paramref name="length"/> ignored, missing bytes read as used.</param>
    public GroupBuddy(ulong start, uint length, ReadOnlySpan<byte> usedBitmap)
    {
        Start = start;
        Length = length;
        MaxOrder = length == 0 ? 0 : BitOperations.Log2(length);
        _base = start & ~((1UL << MaxOrder) - 1);
        _start = new int[MaxOrder + 2];
        _counts = new long[MaxOrder + 1];
        ulong lastChunk = start + Math.Max(length, 1u) - 1;
        for (int k = 0; k <= MaxOrder; k++)
            _start[k + 1] = _start[k] + (int)(((lastChunk >> k) - (_base >> k)) / 64 + 1);
        _words = new ulong[_start[MaxOrder + 1]];
        LoadFreeMap(usedBitmap);
        Rebuild(start, End);
    }

    public ulong Start { get; }
    public uint Length { get; }
    public int MaxOrder { get; }
    public ulong End => Start + Length;

    /// <summary>Free clusters in the group.</summary>
    public long FreeCount => _counts[0];

    /// <summary>Free, absolutely aligned chunks of order k.</summary>
    public long FreeChunks(int k) => k >= 0 && k <= MaxOrder ? _counts[k] : 0;

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

    public bool IsFree(ulong cluster) => cluster >= Start && cluster < End && Get(0, cluster);

    /// <summary>True when every cluster of [first, first + count) is free.</summary>
    public bool IsFreeRun(ulong first, ulong count) =>
        first >= Start && first + count <= End && FirstUsed(first, first + count) == first + count;

    /// <summary>True when every cluster of [first, first + count) is in use (or outside nothing).</summary>
    public bool IsUsedRun(ulong first, ulong count) =>
        first >= Start && first + count <= End && NextFree(first, first + count) == first + count;

    /// <summary>Marks [first, first + count) used (or free) and updates every order.</summary>
    public void Mark(ulong first, ulong count, bool used)
    {
        if (first < Start || count > End - first) throw new ArgumentOutOfRangeException(nameof(first), $"clusters {first}+{count} outside group [{Start}, {End})");
        if (count == 0) return;
        var words = Words(0);
        ulong lo = first - _base, hi = lo + count;
        for (ulong w = lo >> 6; w <= (hi - 1) >> 6; w++)
        {
            ulong from = Math.Max(lo, w << 6) - (w << 6), to = Math.Min(hi, (w + 1) << 6) - (w << 6);
            ulong mask = (to == 64 ? ulong.MaxValue : (1UL << (int)to) - 1) & ~((1UL << (int)from) - 1);
            ulong old = words[(int)w];
            words[(int)w] = used ? old & ~mask : old | mask;
            _counts[0] += BitOperations.PopCount(words[(int)w]) - BitOperations.PopCount(old);
        }
        Rebuild(first, first + count);
    }

    /// <summary>The first free cluster in [from, limit), or limit.</summary>
    public ulong NextFree(ulong from, ulong limit) => NextBit(0, from, Math.Min(limit, End), wantFree: true);

    /// <summary>The first used cluster in [from, limit), or limit (clusters past the group count as used).</summary>
    public ulong FirstUsed(ulong from, ulong limit)
    {
        if (from < Start) return from;
        ulong end = Math.Min(limit, End);
        ulong u = NextBit(0, from, end, wantFree: false);
        return u < end ? u : (limit > End ? Math.Max(End, from) : limit);
    }

    /// <summary>
    /// A free order-k chunk, the first at or after the one holding <paramref name="from"/>
    /// (wrapping within the group); returns its first cluster, or null.
    /// </summary>
    public ulong? FindChunk(int k, ulong from)
    {
        if (k < 0 || k > MaxOrder || _counts[k] == 0) return null;
        ulong lo = _base >> k, hi = (End >> k) + 1;
        ulong at = Math.Clamp(from >> k, lo, hi);
        ulong c = NextBit(k, at, hi, wantFree: true);
        if (c < hi) return c << k;
        c = NextBit(k, lo, at, wantFree: true);
        return c < at ? c << k : null;
    }

    /// <summary>
    /// The first start s (scanning from <paramref name="from"/>, wrapping within the group) with
    /// s a multiple of <paramref name="align"/> and [s, s + count) free; null when the group has none.
    /// Complete: every aligned position is considered. An aligned run must begin with a free chunk
    /// of order min(log2 align, log2 count), so only such chunks are visited, and a used cluster
    /// inside a candidate lets the scan jump past it.
    /// </summary>
    public ulong? FindAligned(ulong count, ulong align, ulong from)
    {
        if (count == 0 || count > Length || !BitOperations.IsPow2(align)) return null;
        // A power-of-two run at least as aligned as asked is exactly a free chunk of its order.
        if (BitOperations.IsPow2(count) && count >= align && FindChunk(BitOperations.Log2(count), from) is { } chunk)
            return chunk;
        from = Math.Clamp(from, Start, End);
        return Scan(count, align, from, End) ?? Scan(count, align, Start, from);
    }

    /// <summary>The longest free run starting at or after <paramref name="from"/> (wrapping), capped at <paramref name="max"/>.</summary>
    public (ulong Start, ulong Length)? FindLongest(ulong max, ulong from)
    {
        if (max == 0 || _counts[0] == 0) return null;
        from = Math.Clamp(from, Start, End);
        (ulong, ulong)? best = null;
        foreach (var (lo, hi) in (ReadOnlySpan<(ulong, ulong)>)[(from, End), (Start, from)])
        {
            for (ulong s = NextFree(lo, hi); s < hi; s = NextFree(s, hi))
            {
                ulong e = FirstUsed(s, Math.Min(End, s + max));
                if (best is not { } b || e - s > b.Item2) best = (s, e - s);
                if (e - s >= max) return best;
                s = e;
            }
        }
        return best;
    }

    // Aligned candidates s in [lo, hi): free chunks of order m at multiples of align, verified whole.
    private ulong? Scan(ulong count, ulong align, ulong lo, ulong hi)
    {
        int a = BitOperations.Log2(align), m = Math.Min(a, BitOperations.Log2(count));
        ulong last = Math.Min(hi, End - count + 1); // candidates s < last still fit in the group
        for (ulong s = AlignUp(lo, align); s < last;)
        {
            ulong limit = ((last - 1) >> m) + 1;
            ulong c = NextAlignedChunk(m, a - m, s >> m, limit);
            if (c >= limit) return null;
            ulong cand = c << m;
            ulong used = FirstUsed(cand, cand + count);
            if (used == cand + count) return cand;
            s = AlignUp(NextFree(used, End), align);
        }
        return null;
    }

    private static ulong AlignUp(ulong v, ulong align) => (v + align - 1) & ~(align - 1);

    // The first absolute index i in [from, limit) whose order-k bit is set (wantFree) or clear,
    // looking only at bit positions in `mask` (a pattern repeating every word). Indices outside the
    // group's arrays read as "not free".
    private ulong NextBit(int k, ulong from, ulong limit, bool wantFree, ulong mask = ulong.MaxValue)
    {
        ulong baseK = _base >> k;
        var words = Words(k);
        ulong endIdx = baseK + (ulong)words.Length * 64;
        if (from < baseK) { if (!wantFree) return from; from = baseK; }
        while (from < limit)
        {
            if (from >= endIdx) return wantFree ? limit : from;
            ulong rel = from - baseK;
            ulong w = words[(int)(rel >> 6)];
            w = (wantFree ? w : ~w) & mask;
            w >>= (int)(rel & 63);
            if (w != 0)
            {
                ulong hit = from + (ulong)BitOperations.TrailingZeroCount(w);
                return hit < limit ? hit : limit;
            }
            from = baseK + (rel | 63) + 1;
        }
        return limit;
    }

    // Bit positions 0 mod 2^j within a word, j = 0..6.
    private static readonly ulong[] StridePattern =
        [ulong.MaxValue, 0x5555555555555555, 0x1111111111111111, 0x0101010101010101, 0x0001000100010001, 0x0000000100000001, 1];

    // The first absolute order-k chunk index in [from, limit) that is a multiple of 2^j and free; limit if none.
    private ulong NextAlignedChunk(int k, int j, ulong from, ulong limit)
    {
        ulong stride = 1UL << j;
        from = AlignUp(from, stride);
        // Word patterns line up with absolute multiples only when the array base is one itself.
        if (j <= 6 && ((_base >> k) & (stride - 1)) == 0)
            return NextBit(k, from, limit, wantFree: true, StridePattern[j]);
        for (ulong i = from; i < limit; i += stride)
            if (Get(k, i)) return i;
        return limit;
    }

    private bool Get(int k, ulong index)
    {
        ulong rel = index - (_base >> k);
        var words = Words(k);
        return (rel >> 6) < (ulong)words.Length && (words[(int)(rel >> 6)] & (1UL << (int)(rel & 63))) != 0;
    }

    private void LoadFreeMap(ReadOnlySpan<byte> used)
    {
        var dest = Words(0);
        ulong offset = Start - _base;
        for (uint c = 0; c < Length; c += 64)
        {
            ulong usedBits = 0;
            for (int b = 0; b < 8; b++)
            {
                int at = (int)(c >> 3) + b;
                usedBits |= (ulong)(at < used.Length ? used[at] : (byte)0xFF) << (8 * b);
            }
            ulong free = ~usedBits;
            uint n = Math.Min(64, Length - c);
            if (n < 64) free &= (1UL << (int)n) - 1;
            ulong pos = offset + c;
            dest[(int)(pos >> 6)] |= free << (int)(pos & 63);
            if ((pos & 63) != 0 && (pos >> 6) + 1 < (ulong)dest.Length) dest[(int)((pos >> 6) + 1)] |= free >> (64 - (int)(pos & 63));
        }
        foreach (ulong w in dest) _counts[0] += BitOperations.PopCount(w);
    }

    // Recomputes orders 1..MaxOrder for the words covering clusters [lo, hi). An order whose words
    // come out unchanged leaves every higher order as it was (each is built from the one below
    // only), so the climb stops there.
    private void Rebuild(ulong lo, ulong hi)
    {
        if (hi <= lo) return;
        for (int k = 1; k <= MaxOrder; k++)
        {
            ulong baseK = _base >> k;
            var below = Words(k - 1);
            var words = Words(k);
            bool changed = false;
            ulong wLo = ((lo >> k) - baseK) >> 6, wHi = Math.Min(((((hi - 1) >> k) - baseK) >> 6), (ulong)words.Length - 1);
            for (ulong w = wLo; w <= wHi; w++)
            {
                ulong a = 2 * w < (ulong)below.Length ? below[(int)(2 * w)] : 0;
                ulong b = 2 * w + 1 < (ulong)below.Length ? below[(int)(2 * w + 1)] : 0;
                ulong v = EvenBits(a & (a >> 1)) | (EvenBits(b & (b >> 1)) << 32);
                if (v == words[(int)w]) continue;
                changed = true;
                _counts[k] += BitOperations.PopCount(v) - BitOperations.PopCount(words[(int)w]);
                words[(int)w] = v;
            }
            if (!changed) break;
        }
    }

    private Span<ulong> Words(int k) => _words.AsSpan(_start[k], _start[k + 1] - _start[k]);

    // Gathers bits 0, 2, 4, ... 62 of x into bits 0..31 (a pair of free halves makes a free chunk).
    private static ulong EvenBits(ulong x)
    {
        x &= 0x5555555555555555;
        x = (x | (x >> 1)) & 0x3333333333333333;
        x = (x | (x >> 2)) & 0x0F0F0F0F0F0F0F0F;
        x = (x | (x >> 4)) & 0x00FF00FF00FF00FF;
        x = (x | (x >> 8)) & 0x0000FFFF0000FFFF;
        return (x | (x >> 16)) & 0x00000000FFFFFFFF;
    }
}
