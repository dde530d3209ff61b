using System.Buffers.Binary;

namespace Untorn;

/// <summary>
/// Commits metadata transactions through the internal jbd2 journal (fs/jbd2/commit.c), in the
/// format the kernel and e2fsck replay: descriptor blocks of tags, the blocks themselves (escaped
/// when they begin with the jbd2 magic), a flush, the commit block, a flush. Then it checkpoints:
/// the blocks go to their home locations, a flush, and the journal superblock's tail moves past the
/// transaction. Only the newest transaction can therefore be in the log at a crash, so a block that
/// was freed and reused for data can never be overwritten by a replay (no revoke records needed).
/// While the writer is open the filesystem carries needs_recovery, as a mounted ext4 does.
/// </summary>
internal sealed class Jbd2CommitWriter : ICommitWriter
{
    private readonly IBlockDevice _dev;
    private readonly Jbd2Journal _journal;
    private readonly int _bs;
    private uint _head;
    private uint _sequence;
    private bool _open;

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
        var jsb = _journal.Super;
        jsb.Start = 0;
        jsb.Sequence = _sequence;
        WriteJournalSuperblock();
        _dev.Flush();
        SetNeedsRecovery(false);
        _dev.Flush();
        _open = false;
    }

    public void Commit(ulong tid, IReadOnlyList<KeyValuePair<ulong, byte[]>> blocks)
    {
        if (!_open) throw new InvalidOperationException("journal writer not opened");
        var jsb = _journal.Super;
        int tagSize = _journal.TagSize;
        int tail = jsb.HasCsumV2OrV3 ? Jbd2Format.TailSize : 0;
        int perDescriptor = (_bs - Jbd2Format.HeaderSize - tail - 16) / tagSize; // the first tag carries the 16-byte uuid
        int descriptors = (blocks.Count + perDescriptor - 1) / perDescriptor;
        long needed = descriptors + blocks.Count + 1;
        if (needed > (jsb.MaxLen - jsb.First) / 2)
            throw new InvalidOperationException($"transaction of {blocks.Count} blocks does not fit the {jsb.MaxLen - jsb.First}-block journal");

        uint seq = _sequence;
        _dev.Flush(); // ordered mode: file data reaches the device before the metadata that points at it
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
        _dev.Flush();
        WriteLog(_head, CommitBlock(seq));
        _head = _journal.Next(_head);
        _dev.Flush();
        _sequence = seq + 1;

        if (!CheckpointAfterCommit) return;
        foreach (var (home, data) in blocks)
            _dev.Write((long)home * _bs, data);
        _dev.Flush();
        jsb.Start = _head;
        jsb.Sequence = _sequence;
        WriteJournalSuperblock();
        _dev.Flush();
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
