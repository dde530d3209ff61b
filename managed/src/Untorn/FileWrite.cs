namespace Untorn;

/// <summary>
/// The state a filesystem needs once something is written (what a read-write mount sets up):
/// the transaction manager over the journal (or in place without one), mballoc and the allocator.
/// Created on the first write, so an image opened read-write but only read is never touched.
/// </summary>
internal sealed class WriteState : IDisposable
{
    private readonly Jbd2CommitWriter? _journal;
    private readonly Timer? _commitTimer;

    public WriteState(TransactionManager transactions, BlockAllocator allocator, Jbd2CommitWriter? journal, TimeSpan commitInterval)
    {
        Transactions = transactions;
        Allocator = allocator;
        _journal = journal;
        // A failed background commit is not lost: the transaction stays running and the next
        // fsync or close reports the error. Nothing may escape a timer thread: it would end the
        // host process, which for a library is worse than a deferred error.
        if (commitInterval > TimeSpan.Zero)
            _commitTimer = new Timer(_ => { try { transactions.Commit(); } catch (Exception) { } }, null, commitInterval, commitInterval);
    }

    public TransactionManager Transactions { get; }
    public BlockAllocator Allocator { get; }

    /// <summary>Commits what is pending and, with a journal, marks it empty and clears needs_recovery.</summary>
    public void Dispose()
    {
        // Wait for a commit already running on the timer: it must not touch the journal or the
        // device after Close below.
        if (_commitTimer != null)
        {
            using var stopped = new ManualResetEvent(false);
            if (_commitTimer.Dispose(stopped)) stopped.WaitOne();
        }
        Transactions.Commit();
        _journal?.Close();
    }
}

// pwrite/pwritev2/fsync: the data write path of extent-mapped regular files (fs/ext4/file.c,
// inode.c): holes get clusters from mballoc (with bigalloc, a hole in a cluster the file owns
// takes that cluster's block) and written extents; unwritten extents are written and converted;
// i_size, i_blocks, mtime and ctime follow. Data goes straight to the device before
// the metadata that points at it commits (ordered mode).
public sealed partial class Ext4Fs
{
    private readonly Lock _writeInit = new();
    private WriteState? _write;

    internal WriteState Writer
    {
        get
        {
            if (_write != null) return _write;
            lock (_writeInit)
            {
                if (_write != null) return _write;
                if (ReadOnly) throw new Ext4Exception(Errno.EROFS, "read-only image");
                Jbd2CommitWriter? journal = null;
                ICommitWriter writer;
                if ((Super.FeatureCompat & Features.CompatHasJournal) != 0)
                {
                    journal = new Jbd2CommitWriter(Cache.Inner, Jbd2Journal.Open(this), Super);
                    journal.Open();
                    writer = journal;
                }
                else writer = new InPlaceCommitWriter(Cache.Inner, Super.BlockSize);
                var mballoc = new Mballoc(new FsGroupBitmaps(this), (ulong)Super.ClusterSize, (ulong)Super.BlockSize);
                var ws = new WriteState(new TransactionManager(Cache, writer), new BlockAllocator(this, mballoc), journal, CommitInterval);
                SeedFreeCounts(ws);
                return _write = ws;
            }
        }
    }

    // The kernel's free counters start from the group descriptors at mount and reach the
    // superblock only at commit, so a crash (of the kernel or of us) can leave its copy stale;
    // the deltas later writes add must start from the true sums.
    private void SeedFreeCounts(WriteState ws)
    {
        var (blocks, inodes) = Groups.FreeSums();
        if (blocks == Super.FreeBlocksCount && inodes == Super.FreeInodesCount) return;
        using var h = ws.Transactions.Start();
        Superblock.SetFreeCounts(h, Super.BlockSize, blocks, inodes);
        h.Complete();
    }

    /// <summary>False without a journal: a crash may leave a metadata operation half done (e2fsck repairs it).</summary>
    public bool IsCrashSafe => (Super.FeatureCompat & Features.CompatHasJournal) != 0;

    /// <summary>pwrite(2): bytes written.</summary>
    public long Pwrite(int fd, ReadOnlySpan<byte> data, long offset, ulong bufferAddress = 0)
    {
        if (offset < 0) throw new Ext4Exception(Errno.EINVAL, "negative offset"); // -1 means "the position" only for pwritev2
        return Pwritev2(fd, [new IoSegment(bufferAddress, data.ToArray())], offset, 0);
    }

    /// <summary>pwritev2(2): offset -1 uses and advances the file position; RWF_DSYNC/RWF_SYNC commit before returning.</summary>
    public long Pwritev2(int fd, ReadOnlySpan<IoSegment> iov, long offset, int flags)
    {
        var f = Files.Get(fd);
        if (iov.Length > UioMaxIov) throw new Ext4Exception(Errno.EINVAL, "too many iovecs");
        long total = 0;
        foreach (var s in iov) total += s.Buffer.Length;
        if (offset < -1) throw new Ext4Exception(Errno.EINVAL, "negative offset");
        if (total == 0) return 0;
        CheckRwFlags(flags, write: true);
        if ((f.Flags & OpenFlags.AccMode) == OpenFlags.RdOnly || f.IsPathOnly) throw new Ext4Exception(Errno.EBADF, "descriptor not open for writing");
        if ((flags & RwfFlags.Atomic) != 0)
            throw new Ext4Exception(Errno.EOPNOTSUPP, "atomic writes are not available on this image yet");
        var inode = ReadInode(f.Inode.Number);
        if (!inode.IsRegular) throw new Ext4Exception(inode.IsDir ? Errno.EISDIR : Errno.EINVAL, "not a regular file");
        if (!inode.HasExtents || inode.HasInlineData)
            throw new Ext4Exception(Errno.EOPNOTSUPP, "writes need an extent-mapped file (for now)");
        bool append = ((f.Flags & OpenFlags.Append) != 0 || (flags & RwfFlags.Append) != 0) && (flags & RwfFlags.NoAppend) == 0;
        bool usePosition = offset == -1;
        var ws = Writer;
        lock (f.PositionLock)
        {
            long pos = append ? (long)inode.Size : usePosition ? f.Position : offset;
            foreach (var s in iov)
                CheckDirect(f, pos, s.Buffer.Length, s.Address);
            // generic_write_check_limits: starting at or past the limit is EFBIG; a write that
            // crosses it is shortened to end there.
            if (pos >= (long)MaxFileSize) throw new Ext4Exception(Errno.EFBIG, "write past the largest file size");
            total = Math.Min(Math.Min(total, MaxRwCount), (long)MaxFileSize - pos);
            var data = new byte[total];
            long at = 0;
            foreach (var s in iov)
            {
                int n = (int)Math.Min(s.Buffer.Length, total - at);
                s.Buffer.Span[..n].CopyTo(data.AsSpan((int)at));
                at += n;
                if (at >= total) break;
            }
            total = RetryAfterCommit(() => WriteData(ws, inode.Number, data, pos));
            if (total < data.Length) // short at ENOSPC: blocks freed since the last commit may help
            {
                ws.Transactions.Commit();
                try { total += WriteData(ws, inode.Number, data[(int)total..], pos + total); }
                catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC) { }
            }
            if (usePosition || append) f.Position = pos + total;
            if ((flags & (RwfFlags.DSync | RwfFlags.Sync)) != 0 || (f.Flags & OpenFlags.DSync) != 0) ws.Transactions.Commit();
            return total;
        }
    }

    /// <summary>fsync/fdatasync: the running transaction (with everything this file changed) is committed.</summary>
    public void Fsync(int fd)
    {
        Files.Get(fd);
        _write?.Transactions.Commit();
    }

    /// <summary>sync(2): commits the running transaction (a no-op when nothing was written).</summary>
    public void Sync() => _write?.Transactions.Commit();

    // ext4_max_size (s_maxbytes): one block short of 2^32 blocks, so an extent's 32-bit start
    // and its length still cover the last block.
    private ulong MaxFileSize => ((1UL << 32) - 1) * (ulong)Super.BlockSize;

    // ext4_should_retry_alloc: blocks the running transaction freed become allocatable only once it
    // commits, so an ENOSPC while changes are pending commits them and tries once more.
    internal T RetryAfterCommit<T>(Func<T> op)
    {
        try { return op(); }
        catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC && _write is { } ws && ws.Transactions.RunningBlocks > 0)
        {
            ws.Transactions.Commit();
            return op();
        }
    }

    // Bytes written: fewer than asked when the space ran out part way (generic_perform_write's
    // short write); ENOSPC when not one byte fit.
    private long WriteData(WriteState ws, uint ino, byte[] data, long offset)
    {
        int bs = Super.BlockSize;
        using var h = ws.Transactions.Start();
        var inode = InodeBuffer.Load(this, ino);
        var tree = new ExtentTree(this, h, inode, ws.Allocator);
        var clusters = new ClusterMap(this, h, inode, tree, ws.Allocator);
        long pos = offset, end = offset + data.Length;
        while (pos < end)
        {
            uint lblk = (uint)(pos / bs);
            var run = BlockMapper.For(this, inode.Parsed).Map(lblk, (ulong)((end - 1) / bs - lblk + 1));
            int inBlock = (int)(pos % bs);
            long runBytes = Math.Min(end - pos, (long)run.Length * bs - inBlock);
            ulong physical = run.Physical;
            uint blocks = (uint)((inBlock + runBytes + bs - 1) / bs);
            if (run.IsHole)
            {
                Extent mapped;
                // Out of data clusters after some bytes went in: a short write. ENOSPC from the
                // extent tree's own blocks instead aborts the whole call (the handle undoes it).
                try { mapped = clusters.MapHole(lblk, blocks, unwritten: false, GoalFor(tree, lblk)); }
                catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC && pos > offset && clusters.DataSpaceRanOut) { break; }
                blocks = mapped.Length;
                runBytes = Math.Min(runBytes, (long)blocks * bs - inBlock);
                physical = mapped.Physical;
            }
            // Whole blocks go to the device; partial edges are merged with what the block holds
            // (zeros for a hole or an unwritten extent, as readers see them).
            var buf = new byte[(long)blocks * bs];
            if (!run.IsHole && !run.Unwritten)
            {
                if (inBlock != 0) Device.Read((long)physical * bs, buf.AsSpan(0, bs));
                long dataEnd = inBlock + runBytes;
                if (dataEnd % bs != 0)
                {
                    long last = dataEnd / bs * bs;
                    Device.Read((long)physical * bs + last, buf.AsSpan((int)last, bs));
                }
            }
            data.AsSpan((int)(pos - offset), (int)runBytes).CopyTo(buf.AsSpan(inBlock));
            Device.Write((long)physical * bs, buf);
            if (run.Unwritten) tree.MarkWritten(lblk, blocks);
            pos += runBytes;
        }
        if ((ulong)pos > inode.Size) inode.Size = (ulong)pos;
        var now = DateTimeOffset.UtcNow;
        inode.SetTime(0x10, 0x88, now); // mtime
        inode.SetTime(0x0C, 0x84, now); // ctime
        inode.Save(h, this);
        h.Complete();
        return pos - offset;
    }

    // Goal: right after the physical block mapping the logical block before (the file grows in place).
    private static ulong GoalFor(ExtentTree tree, uint lblk)
    {
        var before = tree.ReadAll().LastOrDefault(e => e.First < lblk);
        return before == default ? 0 : before.Physical + (lblk - before.First);
    }
}
