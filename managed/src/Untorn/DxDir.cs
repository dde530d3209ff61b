using System.Buffers.Binary;

namespace Untorn;

/// <summary>
/// Hashed (htree / dx) directory lookup: the dx_root in block 0 (after fake "." and ".." entries),
/// dx_node blocks for deeper levels, each an array of {hash, block} sorted by hash. A name is in the
/// leaf whose range holds its hash, or in the following leaves while their hash (low bit = collision
/// continuation) still matches.
/// </summary>
internal static class DxDir
{
    private const int RootInfoOffset = 0x18, RootEntriesOffset = 0x20, NodeEntriesOffset = 8, EntrySize = 8;

    /// <summary>Returned when the index itself is unusable: the caller falls back to a linear scan, as ext4_find_entry does.</summary>
    public sealed class BadIndexException(string why) : Exception(why);

    private readonly struct Frame(byte[] block, int entriesOffset, int count, int at)
    {
        public byte[] Block { get; } = block;
        public int EntriesOffset { get; } = entriesOffset;
        public int Count { get; } = count;
        public int At { get; } = at;
        public uint HashAt(int i) => BinaryPrimitives.ReadUInt32LittleEndian(Block.AsSpan(EntriesOffset + i * EntrySize));
        public uint BlockAt(int i) => BinaryPrimitives.ReadUInt32LittleEndian(Block.AsSpan(EntriesOffset + i * EntrySize + 4)) & 0x0FFFFFFF;
        public Frame WithAt(int at) => new(Block, EntriesOffset, Count, at);
    }

    public static uint Lookup(Ext4Fs fs, Inode dir, ReadOnlySpan<byte> name)
    {
        var sb = fs.Super;
        var mapper = BlockMapper.For(fs, dir);
        var root = Dir.ReadBlock(fs, dir, mapper, 0, out _);
        var info = root.AsSpan(RootInfoOffset);
        if (BinaryPrimitives.ReadUInt32LittleEndian(info) != 0) throw new BadIndexException("reserved_zero set");
        var version = (DxHashVersion)info[4];
        if (info[5] != 8) throw new BadIndexException($"dx_root info_length {info[5]}");
        int levels = info[6];
        if (levels >= (sb.HasLargeDir ? 3 : 2)) throw new BadIndexException($"{levels} indirect levels");
        if ((byte)version <= (byte)DxHashVersion.Tea && sb.UnsignedDirHash) version += 3;
        if (!DxHash.TryCompute(name, version, sb.HashSeed, out uint hash, out _))
            throw new BadIndexException($"unsupported hash version {(byte)version}");

        ulong dirBlocks = dir.Size / (ulong)sb.BlockSize;
        var frames = new Frame[levels + 1];
        frames[0] = Probe(root, RootEntriesOffset, hash, sb, dir, isRoot: true);
        for (int l = 1; l <= levels; l++)
        {
            var node = ReadNode(fs, dir, mapper, frames[l - 1].BlockAt(frames[l - 1].At), dirBlocks);
            frames[l] = Probe(node, NodeEntriesOffset, hash, sb, dir, isRoot: false);
        }
        for (int guard = 0; guard < (int)Math.Min(dirBlocks, int.MaxValue); guard++)
        {
            uint leaf = frames[levels].BlockAt(frames[levels].At);
            if (leaf >= dirBlocks) throw new BadIndexException($"leaf block {leaf} beyond directory size");
            var block = Dir.ReadBlock(fs, dir, mapper, leaf, out var kind);
            if (kind != Dir.BlockKind.Leaf) throw new BadIndexException($"index points at index block {leaf}");
            uint ino = Dir.SearchBlock(fs, dir, block, name);
            if (ino != 0) return ino;
            if (!NextLeaf(fs, dir, mapper, frames, hash, dirBlocks)) return 0;
        }
        throw new BadIndexException("leaf chain longer than the directory");
    }

    // ext4_htree_next_block: step to the next entry at the lowest level that has one; continue only
    // if that entry's hash, without its collision bit, equals the hash we look for.
    private static bool NextLeaf(Ext4Fs fs, Inode dir, BlockMapper mapper, Frame[] frames, uint hash, ulong dirBlocks)
    {
        int l = frames.Length - 1;
        while (l >= 0 && frames[l].At + 1 >= frames[l].Count) l--;
        if (l < 0) return false;
        frames[l] = frames[l].WithAt(frames[l].At + 1);
        if ((frames[l].HashAt(frames[l].At) & ~1u) != hash) return false;
        for (int d = l + 1; d < frames.Length; d++)
        {
            var node = ReadNode(fs, dir, mapper, frames[d - 1].BlockAt(frames[d - 1].At), dirBlocks);
            frames[d] = Entries(node, NodeEntriesOffset, fs.Super, dir, isRoot: false).WithAt(0);
        }
        return true;
    }

    private static byte[] ReadNode(Ext4Fs fs, Inode dir, BlockMapper mapper, uint lblk, ulong dirBlocks)
    {
        if (lblk == 0 || lblk >= dirBlocks) throw new BadIndexException($"index block {lblk} out of range");
        var node = Dir.ReadBlock(fs, dir, mapper, lblk, out var kind);
        if (kind != Dir.BlockKind.DxNode) throw new BadIndexException($"block {lblk} is not an index node");
        return node;
    }

    private static Frame Probe(byte[] block, int offset, uint hash, Superblock sb, Inode dir, bool isRoot)
    {
        var f = Entries(block, offset, sb, dir, isRoot);
        int lo = 1, hi = f.Count - 1, at = 0;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            if (f.HashAt(mid) <= hash) { at = mid; lo = mid + 1; }
            else hi = mid - 1;
        }
        return f.WithAt(at);
    }

    private static Frame Entries(byte[] block, int offset, Superblock sb, Inode dir, bool isRoot)
    {
        int limit = BinaryPrimitives.ReadUInt16LittleEndian(block.AsSpan(offset));
        int count = BinaryPrimitives.ReadUInt16LittleEndian(block.AsSpan(offset + 2));
        if (limit != ExpectedLimit(sb, offset)) throw new BadIndexException($"dx limit {limit} in directory {dir.Number}");
        if (count == 0 || count > limit) throw new BadIndexException($"dx count {count} (limit {limit}) in directory {dir.Number}");
        return new Frame(block, offset, count, 0);
    }

    private static int ExpectedLimit(Superblock sb, int entriesOffset) =>
        (sb.BlockSize - entriesOffset) / EntrySize - (sb.HasMetadataCsum ? 1 : 0);

    /// <summary>The dx_tail checksum of a root or node block (metadata_csum).</summary>
    public static void VerifyNode(Ext4Fs fs, Inode dir, ReadOnlySpan<byte> block, Dir.BlockKind kind, ulong lblk)
    {
        int offset = kind == Dir.BlockKind.DxRoot ? RootInfoOffset + block[RootInfoOffset + 5] : NodeEntriesOffset;
        if (offset + 4 > block.Length) throw Ext4Exception.Corrupted($"directory {dir.Number}: dx block {lblk} header");
        int limit = BinaryPrimitives.ReadUInt16LittleEndian(block[offset..]);
        int count = BinaryPrimitives.ReadUInt16LittleEndian(block[(offset + 2)..]);
        int tail = offset + limit * EntrySize;
        if (count > limit || tail + 8 > block.Length)
            throw Ext4Exception.Corrupted($"directory {dir.Number}: dx block {lblk} has no room for its checksum");
        uint crc = Crc.Crc32c(dir.CsumSeed, block[..(offset + count * EntrySize)]);
        crc = Crc.Crc32cSkipping(crc, block.Slice(tail, 8), 4, 4); // dx_tail with dt_checksum as zero
        if (crc != BinaryPrimitives.ReadUInt32LittleEndian(block[(tail + 4)..]))
            throw Ext4Exception.BadChecksum($"directory {dir.Number}: dx block {lblk}");
    }
}
