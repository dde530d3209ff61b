namespace Untorn.Bench;

/// <summary>
/// The baseline allocator: the groups' on-disk bitmaps (bit set = used) and a brute-force
/// first-fit scan, bit by bit from the goal (wrapping once), for the first aligned free run —
/// what an allocator without buddies or a group index does. Clusters are numbered absolutely;
/// groups start at multiples of the group size, so aligned runs never cross a group.
/// </summary>
internal sealed class BitmapScan
{
    private readonly byte[][] _bitmaps;
    private readonly uint _perGroup;

    public BitmapScan(IGroupBitmapSource source)
    {
        if (source.GroupStart(0) != 0) throw new InvalidOperationException("the baseline expects 4 KiB-block images (first data block 0)");
        _perGroup = source.ClustersPerGroup;
        _bitmaps = new byte[source.GroupCount][];
        for (uint g = 0; g < source.GroupCount; g++)
        {
            _bitmaps[g] = source.LoadBitmap(g);
            Total = source.GroupStart(g) + source.ClustersInGroup(g);
        }
    }

    public ulong Total { get; }

    public bool IsUsed(ulong c) => (_bitmaps[c / _perGroup][(c % _perGroup) >> 3] & (1 << (int)(c % 8))) != 0;

    public void Set(ulong start, ulong n, bool used)
    {
        for (ulong c = start; c < start + n; c++)
        {
            ref byte b = ref _bitmaps[c / _perGroup][(c % _perGroup) >> 3];
            b = used ? (byte)(b | (1 << (int)(c % 8))) : (byte)(b & ~(1 << (int)(c % 8)));
        }
    }

    /// <summary>The first n-aligned run of n free clusters at or after goal (wrapping), marked used; null when none.</summary>
    public ulong? Allocate(ulong goal, ulong n)
    {
        ulong start = AlignUp(goal % Total, n);
        ulong? s = Scan(start, Total, n) ?? Scan(0, start, n);
        if (s is { } at) Set(at, n, used: true);
        return s;
    }

    private ulong? Scan(ulong from, ulong limit, ulong n)
    {
        ulong s = from;
        while (s + n <= limit)
        {
            ulong i = 0;
            while (i < n && !IsUsed(s + i)) i++;
            if (i == n) return s;
            s = AlignUp(s + i + 1, n);
        }
        return null;
    }

    private static ulong AlignUp(ulong v, ulong a) => (v + a - 1) / a * a;
}
