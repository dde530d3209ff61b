namespace Untorn;

/// <summary>
/// Maps and unmaps a file's blocks in whole clusters (fs/ext4/extents.c with bigalloc: the
/// implied cluster allocation of ext4_ext_map_blocks, the partial-cluster frees of
/// ext4_remove_blocks). Extents stay in block units, but a logical cluster owns exactly one
/// physical cluster, each block at the same offset in it; bitmaps and i_blocks count whole
/// clusters, and a cluster is freed only once no block of the file maps into it any more.
/// Without bigalloc a cluster is a block and this is plain extent allocation.
/// </summary>
internal sealed class ClusterMap(Ext4Fs fs, TransactionManager.Handle h, InodeBuffer inode, ExtentTree tree, BlockAllocator alloc)
{
    private readonly ulong _ratio = (ulong)(fs.Super.ClusterSize / fs.Super.BlockSize);
    private ulong ClusterSectors => (ulong)fs.Super.ClusterSize / 512;

    /// <summary>A MapHole failed for want of data clusters, before it changed anything.</summary>
    public bool DataSpaceRanOut { get; private set; }

    /// <summary>
    /// Maps the start of the hole [lblk, lblk + count) and returns the extent inserted (possibly
    /// shorter): into the physical cluster the logical cluster already has, or into new clusters
    /// near <paramref name="goalBlock"/>.
    /// </summary>
    public Extent MapHole(ulong lblk, ulong count, bool unwritten, ulong goalBlock)
    {
        ulong lc = lblk / _ratio, end = lblk + count;
        if (_ratio > 1 && PhysicalCluster(lc) is { } owned)
            return Insert(lblk, Math.Min(end, (lc + 1) * _ratio) - lblk, owned * _ratio + lblk % _ratio, unwritten);
        ulong lcEnd = (end + _ratio - 1) / _ratio;
        // The hole may end inside a cluster whose later blocks are mapped: that cluster is owned already.
        if (_ratio > 1 && end % _ratio != 0 && lcEnd - 1 > lc && PhysicalCluster(lcEnd - 1) != null) lcEnd--;
        ulong pc, got;
        try { (pc, got) = alloc.AllocateData(h, inode.Number, lc, lcEnd - lc, 1, goalBlock / _ratio); }
        catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC) { DataSpaceRanOut = true; throw; }
        inode.Sectors += got * ClusterSectors;
        return Insert(lblk, Math.Min(end, (lc + got) * _ratio) - lblk, pc * _ratio + lblk % _ratio, unwritten);
    }

    /// <summary>
    /// An unwritten mapping of the hole [lblk, lblk + unit) at a physical multiple of unit blocks.
    /// A unit of a cluster or more is whole clusters aligned on their own; a smaller unit (which
    /// divides the cluster) is aligned by its cluster's alignment, whether that cluster is new or owned.
    /// </summary>
    public Extent MapAligned(ulong lblk, ulong unit, ulong goalBlock)
    {
        Extent e;
        if (unit >= _ratio)
        {
            ulong clusters = unit / _ratio;
            var (pc, got) = alloc.AllocateData(h, inode.Number, lblk / _ratio, clusters, clusters, goalBlock / _ratio);
            if (got != clusters) throw new InvalidOperationException("mballoc returned a short aligned unit");
            inode.Sectors += got * ClusterSectors;
            e = Insert(lblk, unit, pc * _ratio, unwritten: true);
        }
        else e = MapHole(lblk, unit, unwritten: true, goalBlock);
        if (e.Length != unit || e.Physical % unit != 0) throw new InvalidOperationException("mballoc returned an unaligned unit");
        return e;
    }

    /// <summary>
    /// Frees the clusters of runs just removed from the tree that no block of the file maps into
    /// any more (a cluster shared with kept blocks at either edge stays), and takes them off i_blocks.
    /// </summary>
    public void Free(List<Extent> removed)
    {
        if (_ratio == 1)
        {
            foreach (var e in removed) FreeClusters(e.Physical, e.Length);
            return;
        }
        var edges = new SortedDictionary<ulong, ulong>(); // physical cluster → its logical cluster
        foreach (var e in removed)
        {
            ulong lc0 = e.First / _ratio, lc1 = (e.End - 1) / _ratio;
            ulong pc0 = e.Physical / _ratio, pc1 = (e.Physical + e.Length - 1) / _ratio;
            if (pc1 - pc0 != lc1 - lc0) throw Ext4Exception.Corrupted($"inode {inode.Number}: extent {e} breaks the cluster mapping");
            edges[pc0] = lc0;
            edges[pc1] = lc1;
            // Clusters strictly inside a removed run were wholly mapped by it.
            if (pc1 > pc0 + 1) FreeClusters(pc0 + 1, pc1 - pc0 - 1);
        }
        foreach (var (pc, lc) in edges)
            if (PhysicalCluster(lc) == null) FreeClusters(pc, 1);
    }

    /// <summary>The physical cluster logical cluster lc owns, from any block of it still mapped; null when none is.</summary>
    public ulong? PhysicalCluster(ulong lc)
    {
        var mapper = BlockMapper.For(fs, inode.Parsed);
        ulong first = lc * _ratio, end = first + _ratio;
        for (ulong l = first; l < end && l < 1UL << 32;)
        {
            var run = mapper.Map(l, end - l);
            if (!run.IsHole)
            {
                if (run.Physical % _ratio != l % _ratio)
                    throw Ext4Exception.Corrupted($"inode {inode.Number}: block {l} is not at its offset in its cluster");
                return run.Physical / _ratio;
            }
            l += run.Length;
        }
        return null;
    }

    private Extent Insert(ulong lblk, ulong length, ulong physical, bool unwritten)
    {
        var e = new Extent((uint)lblk, (uint)length, physical, unwritten);
        tree.Insert(e);
        return e;
    }

    private void FreeClusters(ulong pc, ulong count)
    {
        alloc.Free(h, pc, count);
        inode.Sectors -= count * ClusterSectors;
    }
}
