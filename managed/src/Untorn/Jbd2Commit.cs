using System.Buffers.Binary;

namespace Untorn;

/// <summary>
/// Commits metadata transactions through the internal jbd2 journal (fs/jbd2/commit.c), in the
/// format the kernel and e2fsck replay, with two flushes per commit, as the kernel's
/// PREFLUSH+FUA commit record costs: descriptor blocks of tags and the blocks themselves (escaped
/// when they begin with the jbd2 magic), then revoke blocks, a flush — which also makes durable the
/// file data written for this transaction (ordered mode) — then the commit block, a flush.
/// Checkpointing is lazy, as in jbd2: committed blocks wait in memory (the buffer cache keeps
/// serving them) and go home in one batch, newest version only, when the log is half full; the
/// batch is written just before a commit's log blocks, so that commit's first flush makes it
/// durable and its commit record's epoch moves the tail to it (if only the superblock lands, the
/// batch is home and the new transaction is not replayed; if only the commit record lands,
/// everything from the old tail is replayed, in order). A freed block that a transaction still in
/// the log (tail to head) logged is revoked by the freeing transaction (jbd2_journal_revoke): the
/// revoke suppresses replay of that block from every transaction up to and including the revoking
/// one, and its waiting copy never goes home, so once the free commits the block may hold file
/// data; a later transaction that logs the block again is replayed normally. A block freed and
/// logged again in one transaction is not revoked (jbd2_journal_cancel_revoke). While the writer
/// is open the filesystem carries needs_recovery, as a mounted ext4 does.
/// </summary>
internal sealed class Jbd2CommitWriter : ICommitWriter
{
    private readonly IBlockDevice _dev;
    private readonly Jbd2Journal _journal;
    private readonly int _bs;
    private uint _head;
    private uint _sequence;
    private bool _open;
    private readonly Dictionary<ulong, byte[]> _waiting = new(); // committed, not yet written home
    private long _logUsed; // log blocks from the tail to the head
    private readonly HashSet<ulong> _inLog = new(); // home blocks logged by the transactions from the tail on

    /// <summary>Past this many waiting blocks a commit checkpoints first (bounds memory and replay work).</summary>
    internal const int MaxWaitingBlocks = 4096;

    /// <summary>Tests turn this off to leave committed transactions in the log, as a crash would.</summary>
    internal bool CheckpointAfterCommit { get; set; } = true;

    public bool IsCrashSafe => true;

    // jbd2_journal_get_max_txn_bufs: a quarter of the journal, so one more handle still fits the
    // half that Commit accepts
    public int MaxTransactionBlocks => (int)((_journal.Super.MaxLen - _journal.Super.First) / 4);

    // `device` is the backing device itself, not the buffer cache: the writer puts bytes exactly where they go.
    public Jbd2CommitWriter(IBlockDevice device, Jbd2Journal journal, Superblock fs)
    {
        _dev = device;
        _journal = journal;
        _bs = fs.BlockSize;
        journal.Super.EnableFeaturesFor(fs);
    }

    /// <summary>
    /// Opens the log for writing: the journal superblock says where the next transaction starts
    /// and the ext4 superblock gets needs_recovery, both durable before any transaction is logged.
    /// </summary>
    public void Open()
    {
        var jsb = _journal.Super;
        if (jsb.Start != 0) throw new Ext4Exception(Errno.EOPNOTSUPP, "the journal holds transactions that need recovery");
        _head = jsb.First;
        _sequence = jsb.Sequence;
        jsb.Start = _head;
        WriteJournalSuperblock();
        SetNeedsRecovery(true);
        _dev.Flush();
        _open = true;
    }

    /// <summary>Marks the journal empty and clears needs_recovery (a clean unmount).</summary>
    public void Close()
    {
        if (!_open) return;
        WriteHome(new List<KeyValuePair<ulong, byte[]>>());
        _inLog.Clear();
        _dev.Flush(); // the log may forget the transactions only once they are home
        var jsb = _journal.Super;
        jsb.Start = 0;
        jsb.Sequence = _sequence;
        WriteJournalSuperblock();
        _dev.Flush();
        SetNeedsRecovery(false);
        _dev.Flush();
        _open = false;
    }

    /// <summary>The committed bytes of a block still waiting to go home, or null (the device has them).</summary>
    public byte[]? Waiting(ulong block) => _waiting.GetValueOrDefault(block);

    public IReadOnlyList<KeyValuePair<ulong, byte[]>> Commit(ulong tid, IReadOnlyList<KeyValuePair<ulong, byte[]>> blocks, IReadOnlyList<(ulong First, ulong Count)>? freed = null)
    {
        if (!_open) throw new InvalidOperationException("journal writer not opened");
        var jsb = _journal.Super;
        int tagSize = _journal.TagSize;
        int tail = jsb.HasCsumV2OrV3 ? Jbd2Format.TailSize : 0;
        int perDescriptor = (_bs - Jbd2Format.HeaderSize - tail - 16) / tagSize; // the first tag carries the 16-byte uuid
        int descriptors = (blocks.Count + perDescriptor - 1) / perDescriptor;
        var revoked = Revokes(blocks, freed);
        int perRevoke = (_bs - Jbd2Format.HeaderSize - 4 - tail) / RevokeRecordSize;
        int revokeBlocks = (revoked.Count + perRevoke - 1) / perRevoke;
        long needed = descriptors + blocks.Count + revokeBlocks + 1, capacity = jsb.MaxLen - jsb.First;
        if (needed > capacity / 2)
            throw new InvalidOperationException($"transaction of {blocks.Count} blocks does not fit the {capacity}-block journal");

        var home = new List<KeyValuePair<ulong, byte[]>>();
        // Past half the log, the waiting blocks go home ahead of this log (revoked ones too: until
        // this commit lands they are not free, and the tail may move without it). Until this commit's
        // epoch moves the tail, the old transactions must stay intact behind it: with at most half
        // the log in use and a transaction of at most half, the new log blocks never reach them.
        bool moveTail = CheckpointAfterCommit && _waiting.Count > 0 &&
            (_logUsed + needed > capacity / 2 || _waiting.Count >= MaxWaitingBlocks);
        if (moveTail) WriteHome(home);
        uint seq = _sequence, start = _head;
        WriteLogBlocks(seq, blocks, perDescriptor, tagSize, tail);
        WriteRevokeBlocks(seq, revoked, perRevoke, tail);
        // One flush for what must precede the commit record: this transaction's log blocks, the
        // file data it points at (ordered mode), and the checkpoint batch written above.
        _dev.Flush();
        WriteLog(_head, CommitBlock(seq));
        _head = _journal.Next(_head);
        if (moveTail)
        {
            jsb.Start = start;
            jsb.Sequence = seq;
            WriteJournalSuperblock();
            _logUsed = 0;
        }
        _logUsed += needed;
        _dev.Flush();
        _sequence = seq + 1;

        // The free is durable: the revoked blocks' old bytes must never go home over new data.
        if (moveTail) _inLog.Clear();
        foreach (var block in revoked)
        {
            _inLog.Remove(block);
            _waiting.Remove(block);
        }
        foreach (var (block, _) in blocks) _inLog.Add(block);
        if (!CheckpointAfterCommit) return blocks; // tests: the log keeps everything, nothing goes home
        foreach (var (block, data) in blocks) _waiting[block] = data;
        return home;
    }

    private int RevokeRecordSize => _journal.Super.Has64Bit ? 8 : 4;

    // The freed blocks a transaction in the log holds, in block order, except those this
    // transaction logs again (a cancelled revoke: its new copy must replay).
    private List<ulong> Revokes(IReadOnlyList<KeyValuePair<ulong, byte[]>> blocks, IReadOnlyList<(ulong First, ulong Count)>? freed)
    {
        var result = new List<ulong>();
        if (freed == null || freed.Count == 0 || _inLog.Count == 0) return result;
        var logged = blocks.Select(b => b.Key).ToHashSet();
        // A truncate frees many runs: merge them into disjoint ones and search, not the log × runs.
        var starts = new List<ulong>();
        var ends = new List<ulong>();
        foreach (var (first, count) in freed.OrderBy(r => r.First))
        {
            if (ends.Count > 0 && first <= ends[^1]) ends[^1] = Math.Max(ends[^1], first + count);
            else { starts.Add(first); ends.Add(first + count); }
        }
        foreach (var block in _inLog)
        {
            int i = starts.BinarySearch(block);
            if (i < 0) i = ~i - 1;
            if (i >= 0 && block < ends[i] && !logged.Contains(block)) result.Add(block);
        }
        result.Sort();
        return result;
    }

    // jbd2_journal_revoke_header_t: the header, r_count (bytes used, header included), then
    // big-endian block numbers; with csum v2/v3 the block tail holds crc32c over the whole block.
    private void WriteRevokeBlocks(uint seq, List<ulong> revoked, int perRevoke, int tail)
    {
        int size = RevokeRecordSize;
        for (int first = 0; first < revoked.Count; first += perRevoke)
        {
            int n = Math.Min(perRevoke, revoked.Count - first);
            var block = new byte[_bs];
            Jbd2Format.WriteHeader(block, Jbd2Format.BlockRevoke, seq);
            int pos = Jbd2Format.HeaderSize + 4;
            for (int i = 0; i < n; i++, pos += size)
            {
                ulong b = revoked[first + i];
                if (size == 8) BinaryPrimitives.WriteUInt64BigEndian(block.AsSpan(pos), b);
                else BinaryPrimitives.WriteUInt32BigEndian(block.AsSpan(pos), checked((uint)b));
            }
            BinaryPrimitives.WriteUInt32BigEndian(block.AsSpan(Jbd2Format.HeaderSize), (uint)pos);
            if (tail != 0) SetTailChecksum(block);
            WriteLog(_head, block);
            _head = _journal.Next(_head);
        }
    }

    // Writes the waiting blocks to their home locations in block order; they join `home`.
    private void WriteHome(List<KeyValuePair<ulong, byte[]>> home)
    {
        foreach (var (block, data) in _waiting.OrderBy(b => b.Key))
        {
            _dev.Write((long)block * _bs, data);
            home.Add(new(block, data));
        }
        _waiting.Clear();
    }

    // Descriptor blocks of tags, each followed by the blocks it describes, from the head on.
    private void WriteLogBlocks(uint seq, IReadOnlyList<KeyValuePair<ulong, byte[]>> blocks, int perDescriptor, int tagSize, int tail)
    {
        var jsb = _journal.Super;
        for (int first = 0; first < blocks.Count; first += perDescriptor)
        {
            int n = Math.Min(perDescriptor, blocks.Count - first);
            var descriptor = new byte[_bs];
            Jbd2Format.WriteHeader(descriptor, Jbd2Format.BlockDescriptor, seq);
            uint descriptorAt = _head;
            _head = _journal.Next(_head);
            int pos = Jbd2Format.HeaderSize;
            for (int i = 0; i < n; i++)
            {
                var (home, data) = blocks[first + i];
                var logged = data;
                uint flags = 0;
                if (BinaryPrimitives.ReadUInt32BigEndian(data) == Jbd2Format.Magic)
                {
                    logged = data.ToArray();
                    logged.AsSpan(0, 4).Clear();
                    flags |= Jbd2Format.TagEscape;
                }
                if (i > 0) flags |= Jbd2Format.TagSameUuid;
                if (i == n - 1) flags |= Jbd2Format.TagLast;
                WriteTag(descriptor.AsSpan(pos, tagSize), home, flags, TagChecksum(seq, logged));
                pos += tagSize;
                if (i == 0)
                {
                    jsb.Uuid.CopyTo(descriptor.AsSpan(pos, 16));
                    pos += 16;
                }
                WriteLog(_head, logged);
                _head = _journal.Next(_head);
            }
            if (tail != 0) SetTailChecksum(descriptor);
            WriteLog(descriptorAt, descriptor);
        }
    }

    private void WriteTag(Span<byte> tag, ulong home, uint flags, uint checksum)
    {
        var jsb = _journal.Super;
        if (home > uint.MaxValue && !jsb.Has64Bit) throw new InvalidOperationException($"block {home} needs a 64-bit journal");
        BinaryPrimitives.WriteUInt32BigEndian(tag, (uint)home);
        if (jsb.HasCsumV3)
        {
            BinaryPrimitives.WriteUInt32BigEndian(tag[4..], flags);
            BinaryPrimitives.WriteUInt32BigEndian(tag[8..], (uint)(home >> 32));
            BinaryPrimitives.WriteUInt32BigEndian(tag[12..], checksum);
            return;
        }
        BinaryPrimitives.WriteUInt16BigEndian(tag[4..], (ushort)checksum);
        BinaryPrimitives.WriteUInt16BigEndian(tag[6..], (ushort)flags);
        if (jsb.Has64Bit) BinaryPrimitives.WriteUInt32BigEndian(tag[8..], (uint)(home >> 32));
    }

    // jbd2_block_tag_csum_set: crc32c from the journal seed over the big-endian sequence, then the block as logged.
    private uint TagChecksum(uint sequence, ReadOnlySpan<byte> logged)
    {
        if (!_journal.Super.HasCsumV2OrV3) return 0;
        Span<byte> seq = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(seq, sequence);
        return Crc.Crc32c(Crc.Crc32c(_journal.Super.CsumSeed, seq), logged);
    }

    private void SetTailChecksum(byte[] block)
    {
        block.AsSpan(_bs - 4).Clear();
        BinaryPrimitives.WriteUInt32BigEndian(block.AsSpan(_bs - 4), Crc.Crc32c(_journal.Super.CsumSeed, block));
    }

    private byte[] CommitBlock(uint sequence)
    {
        var block = new byte[_bs];
        Jbd2Format.WriteHeader(block, Jbd2Format.BlockCommit, sequence);
        var now = DateTimeOffset.UtcNow;
        BinaryPrimitives.WriteUInt64BigEndian(block.AsSpan(0x30), (ulong)now.ToUnixTimeSeconds());
        BinaryPrimitives.WriteUInt32BigEndian(block.AsSpan(0x38), (uint)(now.Ticks % TimeSpan.TicksPerSecond * 100));
        // jbd2_commit_block_csum_set: h_chksum[0] = crc32c over the whole block with the type, size and sum zero.
        if (_journal.Super.HasCsumV2OrV3)
            BinaryPrimitives.WriteUInt32BigEndian(block.AsSpan(0x10), Crc.Crc32c(_journal.Super.CsumSeed, block));
        return block;
    }

    private void WriteLog(uint logBlock, byte[] data) => _dev.Write((long)_journal.Physical(logBlock) * _bs, data);

    private void WriteJournalSuperblock() => WriteLog(0, _journal.Super.Serialize(_bs));

    private void SetNeedsRecovery(bool on)
    {
        var raw = new byte[Superblock.Size];
        _dev.Read(Superblock.Offset, raw);
        uint incompat = BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(0x60));
        incompat = on ? incompat | Features.IncompatRecover : incompat & ~Features.IncompatRecover;
        BinaryPrimitives.WriteUInt32LittleEndian(raw.AsSpan(0x60), incompat);
        Superblock.UpdateChecksum(raw);
        _dev.Write(Superblock.Offset, raw);
    }
}
