using System.Buffers.Binary;

namespace Untorn;

/// <summary>
/// Reads extent trees of any depth (ext4_extent_header / _idx / _extent, 12 bytes each). Every node
/// is validated as the kernel's __ext4_ext_check does: magic, entry counts against capacity, the
/// depth the parent promised (which also rules out loops), sorted keys, blocks inside the
/// filesystem, and the extent-block checksum tail.
/// </summary>
internal sealed class ExtentMapper(Ext4Fs fs, Inode inode) : BlockMapper
{
    public const ushort Magic = 0xF30A;
    public const int MaxDepth = 5;
    private const int EntrySize = 12;
    private const ushort InitMaxLen = 32768;

    // The last leaf visited and the logical range its parent index assigns to it.
    private byte[]? _leaf;
    private ulong _leafStart, _leafEnd;

    public override BlockRun Map(ulong logical, ulong maxLength)
    {
        if (_leaf != null && logical >= _leafStart && logical < _leafEnd)
            return MapInLeaf(_leaf, logical, maxLength, _leafEnd);

        ReadOnlySpan<byte> node = inode.BlockArray;
        int depth = CheckHeader(node, -1, isRoot: true);
        ulong start = 0, end = 1UL << 32; // logical range the current node covers
        while (depth > 0)
        {
            int n = BinaryPrimitives.ReadUInt16LittleEndian(node[2..]);
            if (n == 0) return Hole(logical, maxLength, end);
            int i = FindLast(node, n, logical);
            var e = node[(EntrySize * (i + 1))..];
            if (i + 1 < n) end = Math.Min(end, BinaryPrimitives.ReadUInt32LittleEndian(node[(EntrySize * (i + 2))..]));
            start = Math.Max(start, BinaryPrimitives.ReadUInt32LittleEndian(e));
            ulong child = BinaryPrimitives.ReadUInt32LittleEndian(e[4..]) | (ulong)BinaryPrimitives.ReadUInt16LittleEndian(e[8..]) << 32;
            fs.CheckDataBlocks(child, 1, $"inode {inode.Number}: extent index");
            var block = fs.ReadBlock(child);
            VerifyTail(block, child);
            depth = CheckHeader(block, depth - 1, isRoot: false);
            node = block;
            if (depth == 0)
            {
                _leaf = block;
                _leafStart = start;
                _leafEnd = end;
            }
        }
        return MapInLeaf(node, logical, maxLength, end);
    }

    private BlockRun MapInLeaf(ReadOnlySpan<byte> leaf, ulong logical, ulong maxLength, ulong end)
    {
        int n = BinaryPrimitives.ReadUInt16LittleEndian(leaf[2..]);
        if (n == 0) return Hole(logical, maxLength, end);
        int i = FindLast(leaf, n, logical);
        var e = leaf[(EntrySize * (i + 1))..];
        ulong first = BinaryPrimitives.ReadUInt32LittleEndian(e);
        ushort rawLen = BinaryPrimitives.ReadUInt16LittleEndian(e[4..]);
        bool unwritten = rawLen > InitMaxLen;
        ulong len = unwritten ? (ulong)(rawLen - InitMaxLen) : rawLen;
        ulong phys = BinaryPrimitives.ReadUInt32LittleEndian(e[8..]) | (ulong)BinaryPrimitives.ReadUInt16LittleEndian(e[6..]) << 32;
        if (logical >= first && logical < first + len)
        {
            ulong off = logical - first;
            return new BlockRun(logical, phys + off, Math.Min(len - off, maxLength), unwritten);
        }
        if (logical < first) end = Math.Min(end, first);
        else if (i + 1 < n) end = Math.Min(end, BinaryPrimitives.ReadUInt32LittleEndian(leaf[(EntrySize * (i + 2))..]));
        return Hole(logical, maxLength, end);
    }

    private static BlockRun Hole(ulong logical, ulong maxLength, ulong end) =>
        new(logical, 0, Math.Min(maxLength, Math.Max(1, end - logical)), false);

    // Index of the last entry whose first logical block is <= logical (0 if none is).
    private static int FindLast(ReadOnlySpan<byte> node, int n, ulong logical)
    {
        int lo = 1, hi = n - 1, ans = 0;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            if (BinaryPrimitives.ReadUInt32LittleEndian(node[(EntrySize * (mid + 1))..]) <= logical) { ans = mid; lo = mid + 1; }
            else hi = mid - 1;
        }
        return ans;
    }

    private int CheckHeader(ReadOnlySpan<byte> node, int expectedDepth, bool isRoot)
    {
        ushort magic = BinaryPrimitives.ReadUInt16LittleEndian(node);
        int entries = BinaryPrimitives.ReadUInt16LittleEndian(node[2..]);
        int max = BinaryPrimitives.ReadUInt16LittleEndian(node[4..]);
        int depth = BinaryPrimitives.ReadUInt16LittleEndian(node[6..]);
        int capacity = (node.Length - EntrySize) / EntrySize;
        string where = $"inode {inode.Number}: extent {(isRoot ? "root" : "block")}";
        if (magic != Magic) throw Ext4Exception.Corrupted($"{where}: bad magic 0x{magic:x4}");
        if (max == 0 || max > capacity || entries > max)
            throw Ext4Exception.Corrupted($"{where}: bad entry counts ({entries}/{max}, capacity {capacity})");
        if (depth > MaxDepth || (expectedDepth >= 0 && depth != expectedDepth))
            throw Ext4Exception.Corrupted($"{where}: bad depth {depth} (expected {(expectedDepth < 0 ? "<= 5" : expectedDepth)})");
        CheckEntries(node, entries, depth, where);
        return depth;
    }

    private void CheckEntries(ReadOnlySpan<byte> node, int n, int depth, string where)
    {
        ulong nextFree = 0;
        for (int i = 0; i < n; i++)
        {
            var e = node[(EntrySize * (i + 1))..];
            ulong first = BinaryPrimitives.ReadUInt32LittleEndian(e);
            if (i > 0 && first < nextFree) throw Ext4Exception.Corrupted($"{where}: entries out of order");
            if (depth > 0) { nextFree = first + 1; continue; }
            ushort rawLen = BinaryPrimitives.ReadUInt16LittleEndian(e[4..]);
            ulong len = rawLen > InitMaxLen ? (ulong)(rawLen - InitMaxLen) : rawLen;
            if (len == 0) throw Ext4Exception.Corrupted($"{where}: zero-length extent");
            if (first + len > 1UL << 32) throw Ext4Exception.Corrupted($"{where}: extent past the largest logical block");
            ulong phys = BinaryPrimitives.ReadUInt32LittleEndian(e[8..]) | (ulong)BinaryPrimitives.ReadUInt16LittleEndian(e[6..]) << 32;
            fs.CheckDataBlocks(phys, len, where);
            nextFree = first + len;
        }
    }

    private void VerifyTail(ReadOnlySpan<byte> block, ulong pblk)
    {
        if (!fs.Super.HasMetadataCsum) return;
        int max = BinaryPrimitives.ReadUInt16LittleEndian(block[4..]);
        int tail = EntrySize * (max + 1);
        if (max == 0 || tail + 4 > block.Length) throw Ext4Exception.Corrupted($"inode {inode.Number}: extent block {pblk} has no room for its checksum");
        uint stored = BinaryPrimitives.ReadUInt32LittleEndian(block[tail..]);
        uint want = Crc.Crc32c(inode.CsumSeed, block[..tail]);
        if (stored != want) throw Ext4Exception.BadChecksum($"inode {inode.Number}: extent block {pblk}");
    }
}
