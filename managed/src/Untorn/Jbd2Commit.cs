using System.Buffers.Binary;

namespace Untorn;

/// <summary>
/// Commits metadata transactions through the internal jbd2 journal (fs/jbd2/commit.c), in the
/// format the kernel and e2fsck replay, with two flushes per commit, as the kernel's
/// PREFLUSH+FUA commit record costs: descriptor blocks of tags and the blocks themselves (escaped
/// when they begin with the jbd2 magic), a flush — which also makes durable the file data written
/// for this transaction (ordered mode) and the previous transaction's home writes — then the commit
/// block together with the journal superblock whose tail now starts at this transaction, a flush.
/// Then the blocks are written home without waiting; the next commit's first flush makes them
/// durable before its tail update drops this transaction from the log. The log therefore holds at
/// most the last two transactions. A transaction that frees blocks is checkpointed at once (its
/// home writes, a flush, the tail past it, a flush) before the freed blocks can be reused, so no
/// transaction that logged a freed block is ever replayed over the data reusing it (no revoke
/// records needed). While the writer is open the filesystem carries needs_recovery, as a mounted
/// ext4 does.
/// </summary>
internal sealed class Jbd2CommitWriter : ICommitWriter
{
    private readonly IBlockDevice _dev;
    private readonly Jbd2Journal _journal;
    private readonly int _bs;
    private uint _head;
    private uint _sequence;
    private bool _open;
    private bool _homeWritesUnflushed; // the last transaction's home writes, not yet behind a flush

    /// <summary>Tests turn this off to leave committed transactions in the log, as a crash would.</summary>
    internal bool CheckpointAfterCommit { get; set; } = true;

    public bool IsCrashSafe => true;

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
        if (_homeWritesUnflushed) _dev.Flush(); // the log may forget the last transaction only once it is home
        _homeWritesUnflushed = false;
        var jsb = _journal.Super;
        jsb.Start = 0;
        jsb.Sequence = _sequence;
        WriteJournalSuperblock();
        _dev.Flush();
        SetNeedsRecovery(false);
        _dev.Flush();
        _open = false;
    }

    public void Commit(ulong tid, IReadOnlyList<KeyValuePair<ulong, byte[]>> blocks, bool freesBlocks = false)
    {
        if (!_open) throw new InvalidOperationException("journal writer not opened");
        var jsb = _journal.Super;
        int tagSize = _journal.TagSize;
        int tail = jsb.HasCsumV2OrV3 ? Jbd2Format.TailSize : 0;
        int perDescriptor = (_bs - Jbd2Format.HeaderSize - tail - 16) / tagSize; // the first tag carries the 16-byte uuid
        int descriptors = (blocks.Count + perDescriptor - 1) / perDescriptor;
        long needed = descriptors + blocks.Count + 1;
        if (needed > (jsb.MaxLen - jsb.First) / 2) // the log holds the last two transactions
            throw new InvalidOperationException($"transaction of {blocks.Count} blocks does not fit the {jsb.MaxLen - jsb.First}-block journal");

        uint seq = _sequence, start = _head;
        WriteLogBlocks(seq, blocks, perDescriptor, tagSize, tail);
        // One flush for three things that must precede the commit record: this transaction's log
        // blocks, the file data it points at (ordered mode), and the previous transaction's home
        // writes (so the tail may move past it below).
        _dev.Flush();
        _homeWritesUnflushed = false;
        WriteLog(_head, CommitBlock(seq));
        _head = _journal.Next(_head);
        // The tail moves to this transaction in the same epoch as its commit record: if only the
        // superblock lands, the previous transaction is already home and this one is not replayed;
        // if only the commit record lands, both are replayed, in order.
        if (CheckpointAfterCommit && (jsb.Start != start || jsb.Sequence != seq))
        {
            jsb.Start = start;
            jsb.Sequence = seq;
            WriteJournalSuperblock();
        }
        _dev.Flush();
        _sequence = seq + 1;

        if (!CheckpointAfterCommit) return;
        foreach (var (home, data) in blocks)
            _dev.Write((long)home * _bs, data);
        _homeWritesUnflushed = true;
        if (freesBlocks) Checkpoint();
    }

    // Empties the log: the home writes made durable, then the tail moved to the head.
    private void Checkpoint()
    {
        _dev.Flush();
        _homeWritesUnflushed = false;
        var jsb = _journal.Super;
        jsb.Start = _head;
        jsb.Sequence = _sequence;
        WriteJournalSuperblock();
        _dev.Flush();
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
