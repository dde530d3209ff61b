using System.Numerics;

namespace Untorn;

/// <summary>
/// Which groups hold a free, absolutely aligned chunk of at least order k — the kernel's
/// largest-free-order lists (s_mb_largest_free_orders) kept as one bitset over the groups per
/// order, so "which group has a free 2^k chunk" costs one word per 64 groups, never a visit to a
/// group. A group whose buddy is not built yet is entered at the order its descriptor's free count
/// allows (no free chunk is larger than the free space), so a search that trusts the index only
/// skips groups that cannot hold the chunk. The entries for 64 groups are made when a search or an
/// update first touches them: opening a large image reads no descriptors here.
/// Each group's entry is changed only under that group's lock; words are shared, hence atomics.
/// </summary>
internal sealed class GroupOrderIndex
{
    private readonly ulong[][] _atLeast;  // [order][group / 64]: group's largest free order >= order
    private readonly sbyte[] _order;      // per group: the order entered in the bitsets (-1: full)
    private readonly int[] _wordReady;    // per 64 groups: 1 once their entries were made
    private readonly Lock _init = new();
    private readonly Func<uint, int> _initialOrder;

    /// <param name="groupCount">Groups in the filesystem.</param>
    /// <param name="maxOrder">The largest order any group can have.</param>
    /// <param name="initialOrder">A group's order before anything was published for it: an upper bound.</param>
    public GroupOrderIndex(uint groupCount, int maxOrder, Func<uint, int> initialOrder)
    {
        GroupCount = groupCount;
        MaxOrder = maxOrder;
        _initialOrder = initialOrder;
        int words = (int)((groupCount + 63) / 64);
        _atLeast = new ulong[maxOrder + 1][];
        for (int k = 0; k <= maxOrder; k++) _atLeast[k] = new ulong[words];
        _order = new sbyte[groupCount];
        _wordReady = new int[words];
    }

    public uint GroupCount { get; }
    public int MaxOrder { get; }

    /// <summary>The order the index holds for group g (-1 when it has no free cluster).</summary>
    public int OrderOf(uint g)
    {
        EnsureReady(g >> 6);
        return Volatile.Read(ref _order[g]);
    }

    /// <summary>Records group g's largest free order; the caller holds the group's lock.</summary>
    public void Publish(uint g, int order)
    {
        EnsureReady(g >> 6);
        SetEntry(g, Math.Min(order, MaxOrder));
    }

    /// <summary>Groups whose largest free order is at least <paramref name="order"/>, from <paramref name="first"/> round to first - 1.</summary>
    public Cursor Groups(int order, uint first) => new(this, Math.Max(order, 0), first);

    /// <summary>A walk over the groups of one order's bitset, starting at the goal's group and wrapping once.</summary>
    public struct Cursor(GroupOrderIndex index, int order, uint first)
    {
        private ulong _pos = first;
        private bool _wrapped;

        public bool Next(out uint group)
        {
            group = 0;
            if (order > index.MaxOrder || index.GroupCount == 0) return false;
            while (true)
            {
                ulong limit = _wrapped ? first : index.GroupCount;
                ulong hit = index.NextSet(order, _pos, limit);
                if (hit < limit)
                {
                    group = (uint)hit;
                    _pos = hit + 1;
                    return true;
                }
                if (_wrapped || first == 0) return false;
                _wrapped = true;
                _pos = 0;
            }
        }
    }

    private ulong NextSet(int order, ulong from, ulong limit)
    {
        var bits = _atLeast[order];
        while (from < limit)
        {
            ulong word = from >> 6;
            EnsureReady(word);
            ulong w = Volatile.Read(ref bits[word]) >> (int)(from & 63);
            if (w != 0) return Math.Min(limit, from + (ulong)BitOperations.TrailingZeroCount(w));
            from = (word + 1) << 6;
        }
        return limit;
    }

    private void EnsureReady(ulong word)
    {
        if (Volatile.Read(ref _wordReady[word]) != 0) return;
        lock (_init)
        {
            if (_wordReady[word] != 0) return;
            uint first = (uint)(word << 6), end = (uint)Math.Min(GroupCount, first + 64UL);
            for (uint g = first; g < end; g++)
            {
                _order[g] = -1;
                SetEntry(g, Math.Min(_initialOrder(g), MaxOrder));
            }
            Volatile.Write(ref _wordReady[word], 1);
        }
    }

    private void SetEntry(uint g, int order)
    {
        int old = _order[g];
        if (old == order) return;
        Volatile.Write(ref _order[g], (sbyte)order);
        ulong bit = 1UL << (int)(g & 63);
        for (int k = Math.Min(old, order) + 1; k <= Math.Max(old, order); k++)
        {
            ref ulong w = ref _atLeast[k][g >> 6];
            if (order > old) Interlocked.Or(ref w, bit);
            else Interlocked.And(ref w, ~bit);
        }
    }
}
