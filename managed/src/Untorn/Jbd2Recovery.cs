using System.Buffers.Binary;

namespace Untorn;

/// <summary>
/// Journal recovery (fs/jbd2/recovery.c): SCAN finds the end of the log — the first transaction
/// whose blocks are missing, of the wrong sequence, or whose descriptor or commit block fails its
/// checksum (a torn commit); REVOKE collects the revoke records of the complete transactions;
/// REPLAY copies each logged block home unless a later-or-equal revoke covers it or its tag
/// checksum fails, restoring escaped magic words. The result is the list of home writes, so a
/// caller can apply it to the device or, for a read-only open, to an in-memory overlay.
/// </summary>
internal sealed class Jbd2Recovery
{
    private readonly IBlockDevice _dev;
    private readonly Jbd2Journal _j;
    private readonly JournalSuperblock _sb;
    private readonly int _bs;

    private Jbd2Recovery(IBlockDevice dev, Jbd2Journal journal)
    {
        _dev = dev;
        _j = journal;
        _sb = journal.Super;
        _bs = journal.BlockSize;
    }

    /// <summary>What a replay writes, in log order (a later copy of a block replaces an earlier one).</summary>
    public sealed record Plan(List<KeyValuePair<ulong, byte[]>> Writes, uint FirstSequence, uint EndSequence, int Transactions);

    /// <summary>The home writes that replaying the log of <paramref name="journal"/> performs.</summary>
    public static Plan Scan(IBlockDevice dev, Jbd2Journal journal) => new Jbd2Recovery(dev, journal).Run();

    private Plan Run()
    {
        uint first = _sb.Sequence;
        if (_sb.Start == 0) return new Plan([], first, first, 0);
        uint end = Pass(first, uint.MaxValue, null, null);
        var revoked = new Dictionary<ulong, uint>();
        Pass(first, end, revoked, null);
        var writes = new List<KeyValuePair<ulong, byte[]>>();
        Pass(first, end, revoked, writes);
        var latest = new Dictionary<ulong, int>();
        for (int i = 0; i < writes.Count; i++) latest[writes[i].Key] = i;
        var final = writes.Where((w, i) => latest[w.Key] == i).ToList();
        return new Plan(final, first, end, (int)(end - first));
    }

    // One walk over the log from s_start. With revoked == null it is the scan and returns the first
    // incomplete sequence; with writes == null it collects revokes; else it collects replay writes.
    private uint Pass(uint sequence, uint end, Dictionary<ulong, uint>? revoked, List<KeyValuePair<ulong, byte[]>>? writes)
    {
        uint at = _sb.Start;
        long budget = _sb.MaxLen; // a log never holds more blocks than the journal
        bool scan = revoked == null;
        while (sequence != end && budget > 0)
        {
            var block = ReadLog(at, ref budget);
            if (block == null || !Jbd2Format.HasHeader(block, BlockType(block), out uint seq) || seq != sequence) break;
            uint type = BlockType(block);
            at = _j.Next(at);
            if (type == Jbd2Format.BlockDescriptor)
            {
                if (_sb.HasCsumV2OrV3 && !TailOk(block)) break;
                foreach (var (home, flags, checksum) in Tags(block))
                {
                    var data = ReadLog(at, ref budget);
                    at = _j.Next(at);
                    if (data == null) return sequence;
                    if (writes == null) continue;
                    if (revoked!.TryGetValue(home, out uint rseq) && rseq >= seq) continue;
                    // A committed block that fails its checksum: the kernel fails the mount ("journal
                    // recovery failed") rather than replay part of a transaction; so do we.
                    if (_sb.HasCsumV2OrV3 && !TagChecksumOk(seq, data, checksum))
                        throw Ext4Exception.BadChecksum($"journal block {at} (transaction {seq}, home block {home})");
                    if ((flags & Jbd2Format.TagEscape) != 0) BinaryPrimitives.WriteUInt32BigEndian(data, Jbd2Format.Magic);
                    writes.Add(new(home, data));
                }
            }
            else if (type == Jbd2Format.BlockCommit)
            {
                if (_sb.HasCsumV2OrV3 && !CommitOk(block)) break;
                sequence++;
            }
            else if (type == Jbd2Format.BlockRevoke)
            {
                if (_sb.HasCsumV2OrV3 && !TailOk(block)) break;
                if (revoked != null && writes == null) CollectRevokes(block, seq, revoked);
            }
            else break;
        }
        return scan ? sequence : end;
    }

    private static uint BlockType(ReadOnlySpan<byte> block) => BinaryPrimitives.ReadUInt32BigEndian(block[4..]);

    private byte[]? ReadLog(uint logBlock, ref long budget)
    {
        if (budget-- <= 0) return null;
        var b = new byte[_bs];
        _dev.Read((long)_j.Physical(logBlock) * _bs, b);
        return b;
    }

    private IEnumerable<(ulong Home, uint Flags, uint Checksum)> Tags(byte[] descriptor)
    {
        int tagSize = _j.TagSize;
        int limit = _bs - (_sb.HasCsumV2OrV3 ? Jbd2Format.TailSize : 0);
        int pos = Jbd2Format.HeaderSize;
        while (pos + tagSize <= limit)
        {
            var t = descriptor.AsSpan(pos, tagSize);
            ulong home = BinaryPrimitives.ReadUInt32BigEndian(t);
            uint flags, checksum;
            if (_sb.HasCsumV3)
            {
                flags = BinaryPrimitives.ReadUInt32BigEndian(t[4..]);
                home |= (ulong)BinaryPrimitives.ReadUInt32BigEndian(t[8..]) << 32;
                checksum = BinaryPrimitives.ReadUInt32BigEndian(t[12..]);
            }
            else
            {
                checksum = BinaryPrimitives.ReadUInt16BigEndian(t[4..]);
                flags = BinaryPrimitives.ReadUInt16BigEndian(t[6..]);
                if (_sb.Has64Bit) home |= (ulong)BinaryPrimitives.ReadUInt32BigEndian(t[8..]) << 32;
            }
            pos += tagSize;
            if ((flags & Jbd2Format.TagSameUuid) == 0) pos += 16;
            yield return (home, flags, checksum);
            if ((flags & Jbd2Format.TagLast) != 0) yield break;
        }
    }

    private void CollectRevokes(byte[] block, uint seq, Dictionary<ulong, uint> revoked)
    {
        int count = (int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(block.AsSpan(12)), (uint)_bs);
        int size = _sb.Has64Bit ? 8 : 4;
        for (int pos = 16; pos + size <= count; pos += size)
        {
            ulong b = size == 8 ? BinaryPrimitives.ReadUInt64BigEndian(block.AsSpan(pos)) : BinaryPrimitives.ReadUInt32BigEndian(block.AsSpan(pos));
            if (!revoked.TryGetValue(b, out uint old) || old < seq) revoked[b] = seq;
        }
    }

    private bool TailOk(byte[] block)
    {
        uint stored = BinaryPrimitives.ReadUInt32BigEndian(block.AsSpan(_bs - 4));
        var copy = block.ToArray();
        copy.AsSpan(_bs - 4).Clear();
        return Crc.Crc32c(_sb.CsumSeed, copy) == stored;
    }

    private bool CommitOk(byte[] block)
    {
        uint stored = BinaryPrimitives.ReadUInt32BigEndian(block.AsSpan(0x10));
        var copy = block.ToArray();
        copy[0xC] = 0; // h_chksum_type
        copy[0xD] = 0; // h_chksum_size
        copy.AsSpan(0x10, 4).Clear(); // h_chksum[0]
        return Crc.Crc32c(_sb.CsumSeed, copy) == stored;
    }

    private bool TagChecksumOk(uint seq, byte[] data, uint stored)
    {
        Span<byte> s = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(s, seq);
        uint crc = Crc.Crc32c(Crc.Crc32c(_sb.CsumSeed, s), data);
        return _sb.HasCsumV3 ? crc == stored : (crc & 0xFFFF) == stored;
    }

    /// <summary>
    /// Writes a plan home and marks the log empty: s_start 0 and s_sequence past the last replayed
    /// transaction. The caller then clears needs_recovery in the superblock — the order e2fsck
    /// uses, so a crash during recovery just recovers again.
    /// </summary>
    public static void Apply(IBlockDevice dev, Jbd2Journal journal, Plan plan)
    {
        int bs = journal.BlockSize;
        foreach (var (home, data) in plan.Writes) dev.Write((long)home * bs, data);
        dev.Flush();
        var jsb = journal.Super;
        jsb.Start = 0;
        jsb.Sequence = plan.EndSequence;
        dev.Write((long)journal.Physical(0) * bs, jsb.Serialize(bs));
        dev.Flush();
    }
}
