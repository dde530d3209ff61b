namespace Untorn;

/// <summary>
/// Ties mballoc's in-memory search to the on-disk record inside a metadata handle: what is handed
/// out is marked in the block bitmap, group descriptor and superblock counts at once (undone in
/// memory if the handle aborts); what is freed is marked free on disk at once but becomes
/// allocatable again only after the freeing transaction commits (ext4's deferred free), so a crash
/// can never leave an old owner pointing at blocks that were already rewritten.
/// </summary>
internal sealed class BlockAllocator(Ext4Fs fs, Mballoc mballoc) : IExtentBlockAllocator
{
    private readonly uint _ratio = (uint)(fs.Super.ClusterSize / fs.Super.BlockSize);

    public Mballoc Mballoc => mballoc;
    public ulong NodeSectors => (ulong)fs.Super.ClusterSize / 512;

    public ulong AllocateNodeBlock(TransactionManager.Handle h, ulong goal)
    {
        var (start, n) = mballoc.Allocate(new AllocRequest(goal / _ratio, 1, 1, Exact: true));
        Record(h, start, n);
        return start * _ratio;
    }

    public void FreeNodeBlock(TransactionManager.Handle h, ulong block) => Free(h, block / _ratio, 1);

    /// <summary>Clusters for a file's logical clusters [logical, +count), aligned as asked; may return fewer when unaligned.</summary>
    public (ulong Cluster, ulong Count) AllocateData(TransactionManager.Handle h, uint ino, ulong logical, ulong count, ulong align, ulong goal)
    {
        var (start, n) = mballoc.AllocateForFile(ino, logical, count, align, goal);
        Record(h, start, n);
        return (start, n);
    }

    /// <summary>Frees clusters [cluster, +count) (a truncated or unlinked file's data, a freed tree node).</summary>
    public void Free(TransactionManager.Handle h, ulong cluster, ulong count)
    {
        // Load the buddies of every group the run touches while its clusters still read as used: a
        // buddy first built from the freed (uncommitted) bitmap would offer them before the commit
        // (and the deferred free would then find them free already). Extents may cross groups.
        mballoc.EnsureLoaded(cluster, count);
        MarkOnDisk(h, cluster, count, used: false);
        h.Freed(cluster * _ratio, count * _ratio);
        h.AfterCommit(() => mballoc.Free(cluster, count));
    }

    private void Record(TransactionManager.Handle h, ulong cluster, ulong count)
    {
        h.OnAbort(() => mballoc.Free(cluster, count));
        MarkOnDisk(h, cluster, count, used: true);
    }

    private void MarkOnDisk(TransactionManager.Handle h, ulong cluster, ulong count, bool used)
    {
        while (count > 0)
        {
            ulong block = cluster * _ratio;
            uint g = (uint)((block - fs.Super.FirstDataBlock) / fs.Super.BlocksPerGroup);
            ulong groupFirst = fs.Groups.GroupFirstBlock(g) / _ratio;
            ulong inGroup = Math.Min(count, groupFirst + fs.BlockBitmaps.ClustersInGroup(g) - cluster);
            fs.BlockBitmaps.Mark(h, g, (uint)(cluster - groupFirst), (uint)inGroup, used);
            long blocks = (long)(inGroup * _ratio);
            Superblock.AddFreeCounts(h, fs.Super.BlockSize, used ? -blocks : blocks, 0);
            cluster += inGroup;
            count -= inGroup;
        }
    }
}
