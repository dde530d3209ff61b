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
/// nothing; otherwise the allocator may return a shorter run (as ext4_mb_new_blocks may).
/// </summary>
internal readonly record struct AllocRequest(ulong Goal, ulong Length, ulong Align = 1, bool Exact = false)
{
    public bool MustBeWhole => Exact || Align > 1;
}

/// <summary>
/// The multi-block allocator (fs/ext4/mballoc.c) over in-memory buddies of the groups, loaded
/// lazily from their bitmaps. The search is a list of criteria tried in order — the kernel's CR_*
/// passes as data: the goal itself, then an aligned (complete) scan of the groups that can hold the
/// run, then, for requests that may be shortened, the longest run near the goal. Only memory is
/// changed here; the caller records what it keeps on disk (bitmaps, descriptors) in its handle.
/// Thread-safe: each group is searched and changed under its own lock.
/// </summary>
internal sealed class Mballoc(IGroupBitmapSource source, ulong clusterBytes)
{
    private readonly ConcurrentDictionary<uint, GroupBuddy> _groups = new();
    private readonly ConcurrentDictionary<ulong, List<Prealloc>> _prealloc = new();

    private delegate (ulong Start, ulong Length)? Criterion(Mballoc m, AllocRequest r);

    // The order of the passes is policy, kept as data (the kernel's ac_criteria loop).
    private static readonly (string Name, Criterion Pass)[] Criteria =
    [
        ("goal", (m, r) => m.TryGoal(r)),
        ("aligned-scan", (m, r) => m.AlignedScan(r)),
        ("best-effort", (m, r) => r.MustBeWhole ? null : m.BestEffort(r)),
    ];

    public uint GroupCount => source.GroupCount;

    /// <summary>The largest alignment a request may ask for: a whole group.</summary>
    public ulong MaxAlign => source.ClustersPerGroup == 0 ? 0 : 1UL << BitOperations.Log2(source.ClustersPerGroup);

    /// <summary>Finds and reserves clusters for <paramref name="r"/>; ENOSPC when nothing fits, EINVAL for a bad alignment.</summary>
    public (ulong Start, ulong Length) Allocate(AllocRequest r)
    {
        if (r.Length == 0) throw new Ext4Exception(Errno.EINVAL, "zero-length allocation");
        if (!BitOperations.IsPow2(r.Align) || r.Align > MaxAlign)
            throw new Ext4Exception(Errno.EINVAL, $"alignment {r.Align} clusters is not a power of two up to a group ({MaxAlign})");
        foreach (var (_, pass) in Criteria)
            if (pass(this, r) is { } got) return got;
        throw new Ext4Exception(Errno.ENOSPC, $"no {(r.Align > 1 ? $"{r.Align}-aligned " : "")}run of {r.Length} clusters");
    }

    /// <summary>Returns clusters to the free pool (a file's blocks freed, or an aborted allocation undone).</summary>
    public void Free(ulong start, ulong length)
    {
        while (length > 0)
        {
            var (g, buddy) = GroupOf(start);
            ulong n = Math.Min(length, buddy.End - start);
            lock (buddy) buddy.Mark(start, n, used: false);
            start += n;
            length -= n;
        }
    }

    /// <summary>Marks clusters used without searching (blocks an image already uses, replayed state).</summary>
    public void Reserve(ulong start, ulong length)
    {
        var (_, buddy) = GroupOf(start);
        lock (buddy)
        {
            if (!buddy.IsFreeRun(start, length)) throw Ext4Exception.Corrupted($"clusters {start}+{length} are not free");
            buddy.Mark(start, length, used: true);
        }
    }

    /// <summary>Free clusters across the groups loaded so far plus the descriptors' counts for the others.</summary>
    public long FreeClusters()
    {
        long total = 0;
        for (uint g = 0; g < source.GroupCount; g++)
            total += _groups.TryGetValue(g, out var b) ? b.FreeCount : source.FreeHint(g);
        return total;
    }

    /// <summary>Free, absolutely aligned 2^k chunks in the loaded groups (the buddy's per-order counts).</summary>
    public long FreeChunks(int order) => _groups.Values.Sum(b => { lock (b) return b.FreeChunks(order); });

    /// <summary>Builds the buddy of the group holding <paramref name="cluster"/> from its current bitmap, if not yet built.</summary>
    public void EnsureLoaded(ulong cluster) => GroupOf(cluster);

    internal GroupBuddy Buddy(uint g) => _groups.GetOrAdd(g, g =>
        new GroupBuddy(source.GroupStart(g), source.ClustersInGroup(g), source.LoadBitmap(g)));

    private (uint, GroupBuddy) GroupOf(ulong cluster)
    {
        uint lo = 0, hi = source.GroupCount;
        while (hi - lo > 1)
        {
            uint mid = (lo + hi) / 2;
            if (source.GroupStart(mid) <= cluster) lo = mid; else hi = mid;
        }
        var buddy = Buddy(lo);
        if (cluster < buddy.Start || cluster >= buddy.End) throw new ArgumentOutOfRangeException(nameof(cluster), $"cluster {cluster} is in no group");
        return (lo, buddy);
    }

    // CR_GOAL: exactly at the goal (a file growing in place), when it is free and aligned as asked.
    private (ulong, ulong)? TryGoal(AllocRequest r)
    {
        if (r.Goal % r.Align != 0) return null;
        GroupBuddy buddy;
        try { (_, buddy) = GroupOf(r.Goal); }
        catch (ArgumentOutOfRangeException) { return null; }
        lock (buddy)
        {
            if (r.Goal + r.Length > buddy.End || !buddy.IsFreeRun(r.Goal, r.Length)) return null;
            buddy.Mark(r.Goal, r.Length, used: true);
            return (r.Goal, r.Length);
        }
    }

    // The complete aligned search: every group that might hold the run, from the goal's group on.
    private (ulong, ulong)? AlignedScan(AllocRequest r)
    {
        uint groups = source.GroupCount;
        uint first = GoalGroup(r.Goal);
        // A free run of n clusters always contains an aligned chunk of order log2((n+1)/2).
        int needOrder = BitOperations.Log2((r.Length + 1) / 2 == 0 ? 1 : (r.Length + 1) / 2);
        for (uint i = 0; i < groups; i++)
        {
            uint g = (first + i) % groups;
            if (source.ClustersInGroup(g) < r.Length) continue;
            if (!_groups.ContainsKey(g) && source.FreeHint(g) < r.Length) continue;
            var buddy = Buddy(g);
            lock (buddy)
            {
                if (buddy.LargestFreeOrder < needOrder) continue;
                ulong from = i == 0 ? Math.Max(r.Goal, buddy.Start) : buddy.Start;
                if (buddy.FindAligned(r.Length, r.Align, from) is { } start)
                {
                    buddy.Mark(start, r.Length, used: true);
                    return (start, r.Length);
                }
            }
        }
        return null;
    }

    // CR_ANY: the longest free run (up to the length asked) near the goal.
    private (ulong, ulong)? BestEffort(AllocRequest r)
    {
        uint groups = source.GroupCount, first = GoalGroup(r.Goal);
        for (uint i = 0; i < groups; i++)
        {
            uint g = (first + i) % groups;
            if (!_groups.ContainsKey(g) && source.FreeHint(g) == 0) continue;
            var buddy = Buddy(g);
            lock (buddy)
            {
                if (buddy.FreeCount == 0) continue;
                if (buddy.FindLongest(r.Length, i == 0 ? Math.Max(r.Goal, buddy.Start) : buddy.Start) is { } run)
                {
                    buddy.Mark(run.Start, run.Length, used: true);
                    return run;
                }
            }
        }
        return null;
    }

    private uint GoalGroup(ulong goal)
    {
        if (source.GroupCount == 0) return 0;
        try { return GroupOf(goal).Item1; }
        catch (ArgumentOutOfRangeException) { return 0; }
    }

    /// <summary>An inode's in-memory preallocation: logical clusters [Logical, +Length) reserved at Physical.</summary>
    internal sealed record Prealloc(ulong Logical, ulong Physical, ulong Length);

    /// <summary>
    /// Clusters for a file's logical range [logical, logical + length): from the inode's
    /// preallocation when it covers the range (at the right alignment), else a request normalized
    /// to ext4's size classes whose tail becomes the new preallocation. An aligned request whose
    /// normalized size cannot be met falls back to its original size before failing.
    /// </summary>
    public (ulong Start, ulong Length) AllocateForFile(ulong inode, ulong logical, ulong length, ulong align, ulong goal)
    {
        var list = _prealloc.GetOrAdd(inode, _ => []);
        lock (list)
        {
            for (int i = 0; i < list.Count; i++)
            {
                var pa = list[i];
                if (logical < pa.Logical || logical >= pa.Logical + pa.Length) continue;
                ulong phys = pa.Physical + (logical - pa.Logical);
                ulong avail = pa.Logical + pa.Length - logical;
                if (phys % align != 0 || (align > 1 && avail < length)) break;
                ulong take = Math.Min(length, avail);
                // The part of the preallocation before the range stays reserved for its own logical blocks.
                list.RemoveAt(i);
                if (logical > pa.Logical) list.Add(pa with { Length = logical - pa.Logical });
                if (avail > take) list.Add(new Prealloc(logical + take, phys + take, avail - take));
                return (phys, take);
            }
            ulong normalized = NormalizedLength(logical, length, align);
            (ulong Start, ulong Length) got;
            try { got = Allocate(new AllocRequest(goal, normalized, align, Exact: align > 1)); }
            catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC && normalized > length)
            {
                return Allocate(new AllocRequest(goal, length, align, Exact: align > 1)); // the RFC's missing fallback
            }
            ulong used = Math.Min(length, got.Length);
            if (got.Length > used) list.Add(new Prealloc(logical + used, got.Start + used, got.Length - used));
            return (got.Start, used);
        }
    }

    /// <summary>Gives back an inode's unused preallocation (on close, truncate or unlink).</summary>
    public void DiscardPreallocations(ulong inode)
    {
        if (!_prealloc.TryRemove(inode, out var list)) return;
        lock (list)
            foreach (var pa in list) Free(pa.Physical, pa.Length);
    }

    internal IReadOnlyList<Prealloc> PreallocationsOf(ulong inode) =>
        _prealloc.TryGetValue(inode, out var l) ? l.ToArray() : [];

    // ext4_mb_normalize_request's size classes: the 16 KiB .. 1 MiB window (2 MiB up to 4 MiB,
    // 4 MiB up to 8 MiB, else no rounding) holding the request's end, from the request on to the
    // window's end, rounded up to the alignment.
    private ulong NormalizedLength(ulong logical, ulong length, ulong align)
    {
        ulong endBytes = (logical + length) * clusterBytes;
        ulong size = 16 << 10;
        while (size < endBytes && size < 1 << 20) size *= 2;
        if (endBytes > size) size = endBytes <= 4 << 20 ? 2 << 20 : endBytes <= 8 << 20 ? 4 << 20 : length * clusterBytes;
        ulong window = Math.Max(1, size / clusterBytes);
        ulong windowEnd = (logical / window + 1) * window;
        ulong n = Math.Max(length, windowEnd - logical);
        return (n + align - 1) / align * align;
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
