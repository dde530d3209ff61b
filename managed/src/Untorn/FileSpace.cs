namespace Untorn;

/// <summary>fallocate(2) modes (Linux values).</summary>
public static class FallocFlags
{
    public const int KeepSize = 0x1, PunchHole = 0x2, ZeroRange = 0x10;
}

/// <summary>One mapping as fiemap reports it, in bytes (FIEMAP_EXTENT_* flags).</summary>
public readonly record struct FileExtent(ulong Logical, ulong Physical, ulong Length, uint Flags)
{
    public const uint FlagLast = 0x1, FlagUnwritten = 0x800;
}

// A file's space (fs/ext4/extents.c: ext4_fallocate, ext4_punch_hole; inode.c: ext4_truncate) and
// untorn's aligned allocation: each one metadata handle, so it happens wholly or not at all.
public sealed partial class Ext4Fs
{
    /// <summary>ftruncate(2).</summary>
    public void Ftruncate(int fd, long length)
    {
        var f = WritableFile(fd);
        if (length < 0) throw new Ext4Exception(Errno.EINVAL, "negative length");
        if ((ulong)length > MaxFileSize) throw new Ext4Exception(Errno.EFBIG, "length past the largest file size");
        Truncate(f.Inode.Number, (ulong)length);
    }

    internal void Truncate(uint ino, ulong length)
    {
        var ws = Writer;
        using var h = ws.Transactions.Start();
        var inode = InodeBuffer.Load(this, ino);
        if (length < inode.Size)
        {
            FreeBlocksPast(h, ws, inode, length);
            ws.Allocator.Mballoc.DiscardPreallocations(ino);
        }
        inode.Size = length;
        Touch(inode);
        inode.Save(h, this);
        h.Complete();
    }

    // ext4_truncate's block side (also an orphan's): the last partial block zeroed past
    // `length`, every block after it unmapped and its clusters freed.
    private void FreeBlocksPast(TransactionManager.Handle h, WriteState ws, InodeBuffer inode, ulong length)
    {
        int bs = Super.BlockSize;
        ulong keep = (length + (ulong)bs - 1) / (ulong)bs;
        if (keep >= 1UL << 32) return; // nothing can be mapped past the last logical block
        ZeroPartialBlock(inode, length);
        var tree = new ExtentTree(this, h, inode, ws.Allocator);
        new ClusterMap(this, h, inode, tree, ws.Allocator).Free(tree.Remove((uint)keep, (1UL << 32) - keep));
    }

    /// <summary>fallocate(2): mode 0 or KEEP_SIZE reserve unwritten blocks; PUNCH_HOLE|KEEP_SIZE frees; ZERO_RANGE zeroes.</summary>
    public void Fallocate(int fd, int mode, long offset, long length) =>
        RetryAfterCommit(() => { FallocateOnce(fd, mode, offset, length); return 0; });

    private void FallocateOnce(int fd, int mode, long offset, long length)
    {
        var f = WritableFile(fd);
        if (offset < 0 || length <= 0) throw new Ext4Exception(Errno.EINVAL, "bad offset or length");
        if ((ulong)(offset + length) > MaxFileSize) throw new Ext4Exception(Errno.EFBIG, "past the largest file size");
        bool keep = (mode & FallocFlags.KeepSize) != 0;
        var ws = Writer;
        using var h = ws.Transactions.Start();
        var inode = InodeBuffer.Load(this, f.Inode.Number);
        var tree = new ExtentTree(this, h, inode, ws.Allocator);
        ulong start = (ulong)offset, end = (ulong)(offset + length);
        switch (mode & ~FallocFlags.KeepSize)
        {
            case 0:
                ReserveUnwritten(h, ws, inode, tree, start, end);
                break;
            case FallocFlags.PunchHole when keep:
                Punch(h, ws, inode, tree, start, Math.Min(end, inode.Size));
                break;
            case FallocFlags.ZeroRange:
                Punch(h, ws, inode, tree, start, Math.Min(end, inode.Size));
                ReserveUnwritten(h, ws, inode, tree, start, end);
                break;
            default:
                throw new Ext4Exception(mode == FallocFlags.PunchHole ? Errno.EINVAL : Errno.EOPNOTSUPP, $"fallocate mode 0x{mode:x}");
        }
        if (!keep && mode != (FallocFlags.PunchHole | FallocFlags.KeepSize) && end > inode.Size) inode.Size = end;
        Touch(inode);
        inode.Save(h, this);
        h.Complete();
    }

    /// <summary>
    /// Reserves unwritten blocks for [offset, offset+length) so that every alignBytes unit of the
    /// file is one physically contiguous run starting at a multiple of alignBytes on the device —
    /// what an atomic write of that unit needs. Units already mapped that way are kept; a unit
    /// mapped otherwise (partly, fragmented or misaligned) makes the call fail with EINVAL and
    /// change nothing, as does any unit that cannot be placed (ENOSPC). flags: KEEP_SIZE or 0
    /// (extend the size like fallocate mode 0).
    /// </summary>
    public void AllocAligned(int fd, long offset, long length, uint alignBytes, uint flags) =>
        RetryAfterCommit(() => { AllocAlignedOnce(fd, offset, length, alignBytes, flags); return 0; });

    private void AllocAlignedOnce(int fd, long offset, long length, uint alignBytes, uint flags)
    {
        var f = WritableFile(fd);
        int bs = Super.BlockSize;
        if ((flags & ~1u) != 0) throw new Ext4Exception(Errno.EINVAL, "unknown flags");
        if (alignBytes < bs || (alignBytes & (alignBytes - 1)) != 0)
            throw new Ext4Exception(Errno.EINVAL, $"alignment {alignBytes} is not a power of two of at least one block");
        if (offset < 0 || length <= 0 || offset % alignBytes != 0 || length % alignBytes != 0)
            throw new Ext4Exception(Errno.EINVAL, "offset and length must be positive multiples of the alignment");
        if ((ulong)(offset + length) > MaxFileSize) throw new Ext4Exception(Errno.EFBIG, "past the largest file size");
        ulong unit = alignBytes / (ulong)bs;
        var ws = Writer;
        // Bigalloc: a unit below a cluster is aligned by its cluster's own alignment.
        if (ws.Allocator.Mballoc.AlignmentInClusters(alignBytes) > ws.Allocator.Mballoc.MaxAlign)
            throw new Ext4Exception(Errno.EINVAL, "alignment larger than a block group");
        using var h = ws.Transactions.Start();
        var inode = InodeBuffer.Load(this, f.Inode.Number);
        var tree = new ExtentTree(this, h, inode, ws.Allocator);
        var clusters = new ClusterMap(this, h, inode, tree, ws.Allocator);
        for (ulong lblk = (ulong)offset / (ulong)bs; lblk < (ulong)(offset + length) / (ulong)bs; lblk += unit)
        {
            var run = BlockMapper.For(this, inode.Parsed).Map(lblk, unit);
            if (run.IsHole && run.Length >= unit)
            {
                clusters.MapAligned(lblk, unit, GoalFor(tree, (uint)lblk));
                continue;
            }
            if (!run.IsHole && run.Length >= unit && run.Physical % unit == 0) continue; // already one aligned run
            throw new Ext4Exception(Errno.EINVAL, $"file block {lblk} is already mapped without {alignBytes}-byte alignment");
        }
        if ((flags & 1) == 0 && (ulong)(offset + length) > inode.Size) inode.Size = (ulong)(offset + length);
        Touch(inode);
        inode.Save(h, this);
        h.Complete();
    }

    /// <summary>FS_IOC_FIEMAP: the extents overlapping [offset, offset+length), in bytes.</summary>
    public List<FileExtent> Fiemap(int fd, long offset, long length)
    {
        var f = Files.Get(fd);
        if (offset < 0 || length < 0) throw new Ext4Exception(Errno.EINVAL, "bad range");
        var inode = ReadInode(f.Inode.Number);
        if (!inode.HasExtents) throw new Ext4Exception(Errno.EOPNOTSUPP, "fiemap of a file without extents");
        int bs = Super.BlockSize;
        var result = new List<FileExtent>();
        ulong endBlock = (ulong)Math.Min((long)((1UL << 32) - 1), (offset + length + bs - 1) / bs);
        var mapper = BlockMapper.For(this, inode);
        for (ulong lblk = (ulong)offset / (ulong)bs; lblk < endBlock;)
        {
            var run = mapper.Map(lblk, endBlock - lblk);
            if (!run.IsHole)
                result.Add(new FileExtent(run.Logical * (ulong)bs, run.Physical * (ulong)bs, run.Length * (ulong)bs,
                    run.Unwritten ? FileExtent.FlagUnwritten : 0));
            lblk += run.Length;
        }
        if (result.Count > 0 && LastMappedBlock(inode) is { } lastBlock && result[^1].Logical + result[^1].Length >= (lastBlock + 1) * (ulong)bs)
            result[^1] = result[^1] with { Flags = result[^1].Flags | FileExtent.FlagLast };
        return result;
    }

    private ulong? LastMappedBlock(Inode inode)
    {
        var mapper = BlockMapper.For(this, inode);
        ulong? last = null;
        for (ulong l = 0; l < 1UL << 32;)
        {
            var run = mapper.Map(l, (1UL << 32) - l);
            if (!run.IsHole) last = run.Logical + run.Length - 1;
            l += run.Length;
        }
        return last;
    }

    private OpenFile WritableFile(int fd)
    {
        var f = Files.Get(fd);
        if ((f.Flags & OpenFlags.AccMode) == OpenFlags.RdOnly || f.IsPathOnly) throw new Ext4Exception(Errno.EBADF, "descriptor not open for writing");
        var inode = ReadInode(f.Inode.Number);
        if (!inode.IsRegular) throw new Ext4Exception(inode.IsDir ? Errno.EISDIR : Errno.EINVAL, "not a regular file");
        if (!inode.HasExtents || inode.HasInlineData)
            throw new Ext4Exception(Errno.EOPNOTSUPP, "needs an extent-mapped file (for now)");
        return f;
    }

    // Unwritten extents over the holes of [start, end) (bytes), clusters near the file's data
    // (with bigalloc, a hole in a cluster the file already owns takes that cluster's blocks).
    private void ReserveUnwritten(TransactionManager.Handle h, WriteState ws, InodeBuffer inode, ExtentTree tree, ulong start, ulong end)
    {
        int bs = Super.BlockSize;
        var clusters = new ClusterMap(this, h, inode, tree, ws.Allocator);
        for (ulong lblk = start / (ulong)bs; lblk < (end + (ulong)bs - 1) / (ulong)bs;)
        {
            ulong want = (end + (ulong)bs - 1) / (ulong)bs - lblk;
            var run = BlockMapper.For(this, inode.Parsed).Map(lblk, want);
            if (!run.IsHole) { lblk += run.Length; continue; }
            lblk += clusters.MapHole(lblk, run.Length, unwritten: true, GoalFor(tree, (uint)lblk)).Length;
        }
    }

    // Zeroes the partial blocks at the edges and unmaps the whole blocks between.
    private void Punch(TransactionManager.Handle h, WriteState ws, InodeBuffer inode, ExtentTree tree, ulong start, ulong end)
    {
        if (end <= start) return;
        int bs = Super.BlockSize;
        ulong firstWhole = (start + (ulong)bs - 1) / (ulong)bs, endWhole = end / (ulong)bs;
        if (firstWhole > endWhole) { ZeroRange(inode, start, end); return; }
        ZeroRange(inode, start, firstWhole * (ulong)bs);
        ZeroRange(inode, endWhole * (ulong)bs, end);
        if (endWhole > firstWhole)
            new ClusterMap(this, h, inode, tree, ws.Allocator).Free(tree.Remove((uint)firstWhole, endWhole - firstWhole));
    }

    // Zero [start, end) inside written blocks (holes and unwritten extents already read as zeros).
    private void ZeroRange(InodeBuffer inode, ulong start, ulong end)
    {
        int bs = Super.BlockSize;
        var mapper = BlockMapper.For(this, inode.Parsed);
        for (ulong pos = start; pos < end;)
        {
            ulong lblk = pos / (ulong)bs, inBlock = pos % (ulong)bs;
            ulong n = Math.Min(end - pos, (ulong)bs - inBlock);
            var run = mapper.Map(lblk, 1);
            if (!run.IsHole && !run.Unwritten) Device.Write((long)(run.Physical * (ulong)bs + inBlock), new byte[n]);
            pos += n;
        }
    }

    private void ZeroPartialBlock(InodeBuffer inode, ulong length)
    {
        int bs = Super.BlockSize;
        if (length % (ulong)bs != 0) ZeroRange(inode, length, (length / (ulong)bs + 1) * (ulong)bs);
    }
}
