using System.Collections.Concurrent;
using System.Numerics;

namespace Untorn;

/// <summary>Where mballoc reads group bitmaps from. Everything is in clusters, numbered absolutely.</summary>
internal interface IGroupBitmapSource
{
    uint GroupCount { get; }
    /// <summary>Clusters in a full group (only the last may have fewer).</summary>
    uint ClustersPerGroup { get; }
    ulong GroupStart(uint g);
    uint ClustersInGroup(uint g);
    /// <summary>Free clusters by the group descriptor: lets a search skip full groups without loading them.</summary>
    uint FreeHint(uint g);
    /// <summary>The group's bitmap, on-disk convention (bit set = in use).</summary>
    byte[] LoadBitmap(uint g);
}

/// <summary>
/// One allocation request (ext4_allocation_request): a goal cluster, a length, and an alignment.
/// An aligned or exact request gets exactly Length clusters starting at a multiple of Align, or
/// nothing; otherwise the allocator may return a shorter run (as ext4_mb_new_blocks may), at least
/// MinLength long unless nothing that long is free anywhere.
/// </summary>
internal readonly record struct AllocRequest(ulong Goal, ulong Length, ulong Align = 1, bool Exact = false, ulong MinLength = 0)
{
    public bool MustBeWhole => Exact || Align > 1;
}

/// <summary>The kernel's allocation criteria (ac_criteria), in the order they are tried.</summary>
internal enum Criterion
{
    /// <summary>Exactly at the goal (ext4_mb_find_by_goal).</summary>
    Goal,
    /// <summary>CR_POWER2_ALIGNED: a power-of-two request is one free buddy chunk of its order.</summary>
    Power2Aligned,
    /// <summary>CR_GOAL_LEN_FAST: a group whose largest free chunk surely holds the run.</summary>
    GoalLenFast,
    /// <summary>CR_BEST_AVAIL_LEN: an enlarged request trimmed to the largest chunk available (not below MinLength).</summary>
    BestAvailLen,
    /// <summary>CR_GOAL_LEN_SLOW: every group that might hold the run is searched (complete).</summary>
    GoalLenSlow,
    /// <summary>CR_ANY_FREE: the longest free run near the goal, however short.</summary>
    AnyFree,
}

/// <summary>
/// The multi-block allocator (fs/ext4/mballoc.c) over in-memory buddies of the groups, loaded
/// lazily from their bitmaps. A search is the kernel's criteria tried in order — the order is data
/// (<see cref="WholeOrder"/>, <see cref="ShortenableOrder"/>), each pass a named function — and
/// candidate groups come from the per-order group index, never from walking every group. Only
/// memory is changed here; the caller records what it keeps on disk (bitmaps, descriptors) in its
/// handle. Thread-safe: each group is searched and changed under its own lock.
/// </summary>
internal sealed partial class Mballoc
{
    private readonly IGroupBitmapSource _source;
    private readonly ulong _clusterBytes, _blockBytes;
    private readonly GroupSlot?[] _slots;
    private readonly GroupOrderIndex _index;
    private readonly long[] _hits = new long[Enum.GetValues<Criterion>().Length];

    private sealed class GroupSlot
    {
        public readonly Lock Lock = new();
        public GroupBuddy? Buddy;
    }

    // The order of the passes is policy, kept as data (the kernel's ac_criteria loop).
    internal static readonly Criterion[] WholeOrder =
        [Criterion.Goal, Criterion.Power2Aligned, Criterion.GoalLenFast, Criterion.GoalLenSlow];
    internal static readonly Criterion[] ShortenableOrder =
        [Criterion.Goal, Criterion.Power2Aligned, Criterion.GoalLenFast, Criterion.BestAvailLen, Criterion.GoalLenSlow, Criterion.AnyFree];

    // ext4's s_mb_best_avail_max_trim_order: an enlarged request is trimmed by at most 2^3.
    private const int BestAvailMaxTrimOrder = 3;

    /// <param name="source">The groups and their bitmaps.</param>
    /// <param name="clusterBytes">Bytes per cluster (the block size without bigalloc).</param>
    /// <param name="blockBytes">Bytes per block, for ext4's request normalization table (default: the cluster size).</param>
    public Mballoc(IGroupBitmapSource source, ulong clusterBytes, ulong blockBytes = 0)
    {
        _source = source;
        _clusterBytes = clusterBytes;
        _blockBytes = blockBytes == 0 ? clusterBytes : blockBytes;
        _slots = new GroupSlot?[source.GroupCount];
        int maxOrder = source.ClustersPerGroup == 0 ? 0 : BitOperations.Log2(source.ClustersPerGroup);
        _index = new GroupOrderIndex(source.GroupCount, maxOrder, InitialOrder);
    }

    public uint GroupCount => _source.GroupCount;

    /// <summary>The largest alignment a request may ask for: a whole group.</summary>
    public ulong MaxAlign => _source.ClustersPerGroup == 0 ? 0 : 1UL << BitOperations.Log2(_source.ClustersPerGroup);

    /// <summary>An alignment in bytes as clusters (bigalloc): EINVAL unless a power of two.</summary>
    public ulong AlignmentInClusters(ulong alignBytes)
    {
        if (!BitOperations.IsPow2(alignBytes)) throw new Ext4Exception(Errno.EINVAL, $"alignment {alignBytes} is not a power of two");
        return Math.Max(1, alignBytes / _clusterBytes);
    }

    /// <summary>Finds and reserves clusters for <paramref name="r"/>; ENOSPC when nothing fits, EINVAL for a bad alignment.</summary>
    public (ulong Start, ulong Length) Allocate(AllocRequest r)
    {
        r = Validate(r);
        var got = TryAllocate(r);
        // ext4_mb_discard_preallocations_should_retry: other files' unused preallocations are free space.
        if (got == null && DiscardAllPreallocations() > 0) got = TryAllocate(r);
        return got ?? throw NoSpace(r);
    }

    /// <summary>Returns clusters to the free pool (a file's blocks freed, or an aborted allocation undone). Freeing a free cluster is corruption.</summary>
    public void Free(ulong start, ulong length) => ForEachGroupPart(start, length, (g, b, s, n) =>
    {
        if (!b.IsUsedRun(s, n)) throw Ext4Exception.Corrupted($"freeing clusters {s}+{n} of group {g}, some already free");
        b.Mark(s, n, used: false);
    });

    /// <summary>Marks clusters used without searching (blocks an image already uses, replayed state).</summary>
    public void Reserve(ulong start, ulong length) => ForEachGroupPart(start, length, (g, b, s, n) =>
    {
        if (!b.IsFreeRun(s, n)) throw Ext4Exception.Corrupted($"clusters {s}+{n} of group {g} are not free");
        b.Mark(s, n, used: true);
    });

    /// <summary>Free clusters across the groups loaded so far plus the descriptors' counts for the others (preallocated clusters count as used).</summary>
    public long FreeClusters()
    {
        long total = 0;
        for (uint g = 0; g < _source.GroupCount; g++)
            total += Volatile.Read(ref _slots[g])?.Buddy is { } b ? b.FreeCount : _source.FreeHint(g);
        return total;
    }

    /// <summary>Free, absolutely aligned 2^k chunks in the loaded groups (the buddy's per-order counts).</summary>
    public long FreeChunks(int order)
    {
        long total = 0;
        for (uint g = 0; g < _source.GroupCount; g++)
            if (Volatile.Read(ref _slots[g]) is { Buddy: not null } slot)
                lock (slot.Lock) total += slot.Buddy.FreeChunks(order);
        return total;
    }

    /// <summary>Builds the buddies of the groups holding clusters [start, +length) from their current bitmaps, if not yet built.</summary>
    public void EnsureLoaded(ulong start, ulong length)
    {
        if (length == 0) return;
        for (uint g = GroupOf(start), last = GroupOf(start + length - 1); g <= last; g++) Buddy(g);
    }

    /// <summary>How often each criterion satisfied a request (the kernel's mb_stats cr hits).</summary>
    public long CriterionHits(Criterion c) => Interlocked.Read(ref _hits[(int)c]);

    /// <summary>The largest free order the group index holds for group g.</summary>
    internal int IndexedOrder(uint g) => _index.OrderOf(g);

    internal GroupBuddy Buddy(uint g)
    {
        var slot = Slot(g);
        lock (slot.Lock) return Load(g, slot);
    }

    private Ext4Exception NoSpace(AllocRequest r) =>
        new(Errno.ENOSPC, $"no {(r.Align > 1 ? $"{r.Align}-aligned " : "")}run of {(r.MustBeWhole ? r.Length : 1)} clusters");

    private AllocRequest Validate(AllocRequest r)
    {
        if (r.Length == 0) throw new Ext4Exception(Errno.EINVAL, "zero-length allocation");
        if (!BitOperations.IsPow2(r.Align) || r.Align > MaxAlign)
            throw new Ext4Exception(Errno.EINVAL, $"alignment {r.Align} clusters is not a power of two up to a group ({MaxAlign})");
        // Runs never cross a group boundary (each group is searched and locked on its own).
        if (r.Length > _source.ClustersPerGroup)
        {
            if (r.MustBeWhole) throw new Ext4Exception(Errno.EINVAL, $"a run of {r.Length} clusters does not fit in a group ({_source.ClustersPerGroup})");
            r = r with { Length = _source.ClustersPerGroup };
        }
        return r with { MinLength = Math.Min(r.MinLength, r.Length) };
    }

    private (ulong Start, ulong Length)? TryAllocate(AllocRequest r)
    {
        foreach (var c in r.MustBeWhole ? WholeOrder : ShortenableOrder)
        {
            if (Run(c, r) is { } got)
            {
                Interlocked.Increment(ref _hits[(int)c]);
                return got;
            }
        }
        return null;
    }

    private (ulong, ulong)? Run(Criterion c, in AllocRequest r) => c switch
    {
        Criterion.Goal => CrGoal(r),
        Criterion.Power2Aligned => CrPower2Aligned(r),
        Criterion.GoalLenFast => CrGoalLenFast(r),
        Criterion.BestAvailLen => CrBestAvailLen(r),
        Criterion.GoalLenSlow => CrGoalLenSlow(r),
        Criterion.AnyFree => CrAnyFree(r),
        _ => throw new ArgumentOutOfRangeException(nameof(c)),
    };

    // Exactly at the goal (a file growing in place), when it is free and aligned as asked.
    private (ulong, ulong)? CrGoal(in AllocRequest r)
    {
        if (r.Goal % r.Align != 0 || GroupOfOrNull(r.Goal) is not { } g) return null;
        var slot = Slot(g);
        lock (slot.Lock)
        {
            var b = Load(g, slot);
            if (r.Length > b.End - r.Goal || !b.IsFreeRun(r.Goal, r.Length)) return null;
            return Take(g, b, r.Goal, r.Length);
        }
    }

    // A power-of-two request at least as long as its alignment is exactly one free buddy chunk.
    private (ulong, ulong)? CrPower2Aligned(in AllocRequest r)
    {
        if (!BitOperations.IsPow2(r.Length) || r.Length < r.Align) return null;
        return SearchGroups(BitOperations.Log2(r.Length), r, Find.Chunk, r.Length);
    }

    // A free chunk of order ceil(log2(max(length, align))) holds the run at its start, aligned.
    private (ulong, ulong)? CrGoalLenFast(in AllocRequest r)
    {
        ulong span = Math.Max(r.Length, r.Align);
        if (BitOperations.IsPow2(r.Length) && r.Length >= r.Align) return null; // that was CR_POWER2_ALIGNED
        return SearchGroups(CeilLog2(span), r, Find.Chunk, r.Length);
    }

    // An enlarged (normalized) request takes the largest chunk there is, trimmed by up to 2^3, never below MinLength.
    private (ulong, ulong)? CrBestAvailLen(in AllocRequest r)
    {
        if (r.MinLength == 0 || r.MinLength >= r.Length) return null;
        int top = BitOperations.Log2(r.Length - 1); // chunks shorter than the request: the rest was tried
        int floor = Math.Max(BitOperations.Log2(r.Length) - BestAvailMaxTrimOrder, CeilLog2(r.MinLength));
        for (int order = top; order >= floor; order--)
            if (SearchGroups(order, r, Find.Chunk, 1UL << order) is { } got) return got;
        return null;
    }

    private static int CeilLog2(ulong n) => n <= 1 ? 0 : BitOperations.Log2(n - 1) + 1;

    // The complete search: every group that might hold the run. An aligned run of n clusters
    // begins with a free chunk of order min(log2 align, log2 n), and any run of n contains one of
    // order log2(n + 1) - 1, so groups without such a chunk are skipped, and no others.
    private (ulong, ulong)? CrGoalLenSlow(in AllocRequest r)
    {
        int need = Math.Max(Math.Min(BitOperations.Log2(r.Align), BitOperations.Log2(r.Length)), BitOperations.Log2(r.Length + 1) - 1);
        return SearchGroups(need, r, Find.Aligned, r.Length);
    }

    // Whatever is free nearest the goal: the longest run up to the length asked.
    private (ulong, ulong)? CrAnyFree(in AllocRequest r) => SearchGroups(0, r, Find.Longest, r.Length);

    private enum Find { Chunk, Aligned, Longest }

    // Visits the groups the index lists for `order`, the goal's group first, and takes the first
    // run `find` produces in one of them.
    private (ulong Start, ulong Length)? SearchGroups(int order, in AllocRequest r, Find find, ulong length)
    {
        uint first = GroupOfOrNull(r.Goal) ?? 0;
        var groups = _index.Groups(order, first);
        while (groups.Next(out uint g))
        {
            var slot = Slot(g);
            lock (slot.Lock)
            {
                var b = Load(g, slot);
                if (b.LargestFreeOrder < order) continue; // the index held the descriptor's bound
                ulong from = g == first ? Math.Clamp(r.Goal, b.Start, b.End) : b.Start;
                (ulong, ulong)? run = find switch
                {
                    Find.Chunk => b.FindChunk(order, from) is { } c && length <= b.End - c ? (c, length) : null,
                    Find.Aligned => b.FindAligned(length, r.Align, from) is { } s ? (s, length) : null,
                    _ => b.FindLongest(length, from),
                };
                if (run is { } got) return Take(g, b, got.Item1, got.Item2);
            }
        }
        return null;
    }

    // Marks a found run used and republishes the group's order; the caller holds the group's lock.
    private (ulong, ulong) Take(uint g, GroupBuddy b, ulong start, ulong length)
    {
        b.Mark(start, length, used: true);
        _index.Publish(g, b.LargestFreeOrder);
        return (start, length);
    }

    private void ForEachGroupPart(ulong start, ulong length, Action<uint, GroupBuddy, ulong, ulong> change)
    {
        while (length > 0)
        {
            uint g = GroupOf(start);
            var slot = Slot(g);
            ulong n;
            lock (slot.Lock)
            {
                var b = Load(g, slot);
                n = Math.Min(length, b.End - start);
                change(g, b, start, n);
                _index.Publish(g, b.LargestFreeOrder);
            }
            start += n;
            length -= n;
        }
    }

    private GroupSlot Slot(uint g)
    {
        var slot = Volatile.Read(ref _slots[g]);
        if (slot != null) return slot;
        Interlocked.CompareExchange(ref _slots[g], new GroupSlot(), null);
        return _slots[g]!;
    }

    // The caller holds the slot's lock.
    private GroupBuddy Load(uint g, GroupSlot slot)
    {
        if (slot.Buddy is { } b) return b;
        b = new GroupBuddy(_source.GroupStart(g), _source.ClustersInGroup(g), _source.LoadBitmap(g));
        Volatile.Write(ref slot.Buddy, b);
        _index.Publish(g, b.LargestFreeOrder);
        return b;
    }

    // An unloaded group's order bound from its descriptor: no free chunk exceeds the free count.
    private int InitialOrder(uint g)
    {
        if (Volatile.Read(ref _slots[g])?.Buddy is { } b) return b.LargestFreeOrder;
        ulong free = Math.Min(_source.FreeHint(g), _source.ClustersInGroup(g));
        return free == 0 ? -1 : BitOperations.Log2(free);
    }

    private uint GroupOf(ulong cluster) =>
        GroupOfOrNull(cluster) ?? throw new ArgumentOutOfRangeException(nameof(cluster), $"cluster {cluster} is in no group");

    private uint? GroupOfOrNull(ulong cluster)
    {
        uint groups = _source.GroupCount;
        if (groups == 0 || cluster < _source.GroupStart(0)) return null;
        ulong g = (cluster - _source.GroupStart(0)) / _source.ClustersPerGroup;
        if (g >= groups || cluster - _source.GroupStart((uint)g) >= _source.ClustersInGroup((uint)g)) return null;
        return (uint)g;
    }
}

/// <summary>mballoc's view of an opened filesystem: groups in clusters, bitmaps read (or built for BLOCK_UNINIT) by Balloc.</summary>
internal sealed class FsGroupBitmaps(Ext4Fs fs) : IGroupBitmapSource
{
    private readonly uint _ratio = (uint)(fs.Super.ClusterSize / fs.Super.BlockSize);

    public uint GroupCount => fs.Super.GroupCount;
    public uint ClustersPerGroup => fs.Super.ClustersPerGroup;
    public ulong GroupStart(uint g) => fs.Groups.GroupFirstBlock(g) / _ratio;
    public uint ClustersInGroup(uint g) => fs.BlockBitmaps.ClustersInGroup(g);
    public uint FreeHint(uint g) => fs.Group(g).FreeBlocksCount;
    public byte[] LoadBitmap(uint g) => fs.BlockBitmaps.Read(g);
}
