namespace Untorn;

/// <summary>How a closed transaction's metadata blocks reach the disk as one unit.</summary>
internal interface ICommitWriter
{
    /// <summary>
    /// Makes <paramref name="blocks"/> durable together (for jbd2: log, flush, commit record,
    /// flush) and writes them to their home locations, then or in a later commit's batch. File data written before the call
    /// must reach the device first (ordered mode): implementations flush before committing.
    /// <paramref name="freed"/>: block runs the transaction freed; they become reusable on return,
    /// so nothing older may be replayed or checkpointed over them after that (jbd2: revoke records).
    /// Returns the blocks written to their home locations by this call (of this or earlier
    /// transactions): the cache may drop them.
    /// </summary>
    IReadOnlyList<KeyValuePair<ulong, byte[]>> Commit(ulong tid, IReadOnlyList<KeyValuePair<ulong, byte[]>> blocks, IReadOnlyList<(ulong First, ulong Count)>? freed = null);

    /// <summary>The committed bytes of a block not yet written home, or null when the device holds them.</summary>
    byte[]? Waiting(ulong block);

    /// <summary>False for a filesystem without a journal: a crash may leave a metadata operation half done.</summary>
    bool IsCrashSafe { get; }

    /// <summary>A running transaction this large commits before another handle joins it.</summary>
    int MaxTransactionBlocks => int.MaxValue;
}

/// <summary>
/// No journal (mke2fs -O ^has_journal): flush the data, write the metadata home, flush. The order
/// keeps data ahead of the metadata that points at it, but a crash during the home writes can
/// leave an operation half done; e2fsck repairs that, as it does for the kernel's nojournal mode.
/// </summary>
internal sealed class InPlaceCommitWriter(IBlockDevice device, int blockSize) : ICommitWriter
{
    public bool IsCrashSafe => false;

    public IReadOnlyList<KeyValuePair<ulong, byte[]>> Commit(ulong tid, IReadOnlyList<KeyValuePair<ulong, byte[]>> blocks, IReadOnlyList<(ulong First, ulong Count)>? freed = null)
    {
        device.Flush();
        foreach (var (block, data) in blocks.OrderBy(b => b.Key))
            device.Write((long)block * blockSize, data);
        device.Flush();
        return blocks;
    }

    public byte[]? Waiting(ulong block) => null;
}

/// <summary>
/// Metadata transactions in jbd2's shape: operations run as handles that join the one running
/// transaction; a commit closes it, hands its blocks to the commit writer (journal or in place)
/// and then lets the buffer cache drop the blocks that are now home. Handles run one at a time
/// (a metadata operation sees and leaves a consistent filesystem); readers never wait.
/// </summary>
internal sealed class TransactionManager(BufferCache cache, ICommitWriter writer)
{
    private readonly Lock _lock = new();
    private readonly BufferCache _cache = cache;
    private Dictionary<ulong, byte[]> _running = new();
    private List<Action> _afterCommit = new();
    private List<(ulong First, ulong Count)> _freed = new();
    private ulong _tid = 1;

    public bool IsCrashSafe => writer.IsCrashSafe;

    /// <summary>Blocks changed by the running transaction (not yet committed).</summary>
    public int RunningBlocks
    {
        get { lock (_lock) return _running.Count; }
    }

    /// <summary>Starts a metadata operation; dispose without <see cref="Handle.Complete"/> to undo it.</summary>
    public Handle Start()
    {
        _lock.Enter();
        // jbd2's start_this_handle: a transaction near the journal's size commits first (else a
        // burst of operations between timer commits would outgrow the journal)
        if (_running.Count >= writer.MaxTransactionBlocks)
        {
            try { Commit(); }
            catch { _lock.Exit(); throw; }
        }
        return new Handle(this);
    }

    /// <summary>Commits the running transaction (fsync, sync, close, the commit timer).</summary>
    public void Commit()
    {
        lock (_lock)
        {
            if (_running.Count == 0 && _freed.Count == 0)
            {
                foreach (var a in _afterCommit) a();
                _afterCommit.Clear();
                return;
            }
            var blocks = _running.ToList();
            IReadOnlyList<KeyValuePair<ulong, byte[]>> home;
            _cache.BeginHomeWrites();
            try { home = writer.Commit(_tid++, blocks, _freed); }
            finally { _cache.EndHomeWrites(); }
            _running = new Dictionary<ulong, byte[]>();
            _freed = new List<(ulong, ulong)>();
            foreach (var (block, data) in home) _cache.Release(block, data);
            var after = _afterCommit;
            _afterCommit = new List<Action>();
            foreach (var a in after) a();
        }
    }

    /// <summary>
    /// fdatasync's commit: when the running transaction's only change is <paramref name="block"/> and
    /// <paramref name="notNeededForData"/> judges its new bytes against the committed ones as
    /// nothing a reader of the file's data needs, only the device is flushed (file data written in
    /// place becomes durable) and the change waits for the next commit; otherwise it commits.
    /// </summary>
    public void CommitUnlessOnly(ulong block, Func<byte[], byte[], bool> notNeededForData)
    {
        lock (_lock)
        {
            if (_running.Count == 1 && _running.TryGetValue(block, out var running))
            {
                // The committed bytes wait in the journal writer or are home on the device.
                var committed = writer.Waiting(block);
                if (committed == null)
                {
                    committed = new byte[running.Length];
                    _cache.Inner.Read((long)block * running.Length, committed);
                }
                if (notNeededForData(committed, running))
                {
                    _cache.Inner.Flush();
                    return;
                }
            }
            Commit();
        }
    }

    /// <summary>One metadata operation. Changes are visible at once; an aborted handle restores what it changed.</summary>
    internal sealed class Handle : IDisposable
    {
        private readonly TransactionManager _tm;
        private readonly Dictionary<ulong, (byte[]? Cached, bool WasRunning, byte[]? Running)> _undo = new();
        private readonly List<Action> _onAbort = new();
        private readonly List<Action> _afterCommitLocal = new();
        private readonly List<(ulong First, ulong Count)> _freedLocal = new();
        private bool _done;

        internal Handle(TransactionManager tm) => _tm = tm;

        /// <summary>
        /// A private copy of the block's current bytes to modify; <see cref="Dirty"/> publishes it.
        /// </summary>
        public byte[] GetWriteAccess(ulong block) => _tm._cache.Snapshot(block);

        /// <summary>Publishes the new bytes of a block and adds it to the running transaction.</summary>
        public void Dirty(ulong block, byte[] data)
        {
            ObjectDisposedException.ThrowIf(_done, this);
            if (!_undo.ContainsKey(block))
            {
                bool wasRunning = _tm._running.TryGetValue(block, out var running);
                _undo[block] = (_tm._cache.TryGetCached(block), wasRunning, running);
            }
            _tm._cache.Publish(block, data);
            _tm._running[block] = data;
        }

        /// <summary>
        /// A metadata block was freed: drop its pending bytes (it may next hold file data, which must
        /// not be overwritten by a later commit or checkpoint). <see cref="Freed"/> also does this.
        /// </summary>
        public void Forget(ulong block)
        {
            ObjectDisposedException.ThrowIf(_done, this);
            if (!_undo.ContainsKey(block))
            {
                bool wasRunning = _tm._running.TryGetValue(block, out var running);
                _undo[block] = (_tm._cache.TryGetCached(block), wasRunning, running);
            }
            _tm._cache.Forget(block);
            _tm._running.Remove(block);
        }

        /// <summary>
        /// Blocks [first, +count) were freed (jbd2_journal_forget/revoke for whatever metadata they
        /// held): their pending bytes are dropped and the commit tells the writer, which revokes the
        /// ones an older transaction in the log still holds and never checkpoints them.
        /// </summary>
        public void Freed(ulong first, ulong count)
        {
            ObjectDisposedException.ThrowIf(_done, this);
            foreach (var block in _tm._cache.CachedIn(first, count)) Forget(block);
            _freedLocal.Add((first, count));
        }

        /// <summary>
        /// Work that may only happen once this handle's transaction is durable — e.g. letting the
        /// allocator reuse blocks this operation freed (reused earlier, a crash before the commit
        /// could leave the old owner pointing at someone else's data). Dropped if the handle aborts.
        /// </summary>
        public void AfterCommit(Action action)
        {
            ObjectDisposedException.ThrowIf(_done, this);
            _afterCommitLocal.Add(action);
        }

        /// <summary>Undo work outside the block cache (in-memory caches of parsed structures) on abort.</summary>
        public void OnAbort(Action undo) => _onAbort.Add(undo);

        /// <summary>The operation succeeded: keep its changes in the running transaction.</summary>
        public void Complete()
        {
            ObjectDisposedException.ThrowIf(_done, this);
            _done = true;
            _tm._afterCommit.AddRange(_afterCommitLocal);
            _tm._freed.AddRange(_freedLocal);
            _tm._lock.Exit();
        }

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            try
            {
                foreach (var (block, (cached, wasRunning, running)) in _undo)
                {
                    if (cached != null) _tm._cache.Publish(block, cached);
                    else _tm._cache.Forget(block);
                    if (wasRunning) _tm._running[block] = running!;
                    else _tm._running.Remove(block);
                }
                for (int i = _onAbort.Count - 1; i >= 0; i--) _onAbort[i]();
            }
            finally { _tm._lock.Exit(); }
        }
    }
}
