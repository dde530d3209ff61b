using System.Buffers.Binary;

namespace Untorn;

/// <summary>
/// Adds and removes entries of a block-mapped directory inside a metadata handle (fs/ext4/namei.c).
/// A changed leaf block is repacked (entries in order, the last one's rec_len reaching the
/// checksum tail). Linear directories take a new entry in the first block with room; when the only
/// block is full and the filesystem has dir_index, the directory becomes an htree
/// (make_indexed_dir), else it grows a block. Indexed (htree) directories hash the name to its
/// leaf; a full leaf is split by hash (do_split) into a new block whose first hash — with the
/// collision bit when equal hashes straddle the split — is inserted in the parent index node; a
/// full index node splits, and a full root adds an index level.
/// </summary>
internal sealed class DirWriter(Ext4Fs fs, TransactionManager.Handle h, InodeBuffer dir, BlockAllocator alloc)
{
    private const int TailSize = 12, DxEntrySize = 8, RootInfoOffset = 0x18, RootEntriesOffset = 0x20, NodeEntriesOffset = 8;
    private readonly int _bs = fs.Super.BlockSize;
    private int Tail => fs.Super.HasMetadataCsum ? TailSize : 0;

    private readonly record struct Entry(uint Ino, byte Type, byte[] Name)
    {
        public int Size => DirentIterator.RecLenFor(Name.Length);
    }

    /// <summary>Adds name → ino; EEXIST is the caller's check (it looked the name up first).</summary>
    public void Add(ReadOnlySpan<byte> name, uint ino, byte fileType)
    {
        var entry = new Entry(ino, fs.Super.HasFiletype ? fileType : (byte)0, name.ToArray());
        if (dir.Parsed.IsIndexedDir && (fs.Super.FeatureCompat & Features.CompatDirIndex) != 0) AddIndexed(entry);
        else AddLinear(entry);
    }

    /// <summary>Removes name; returns the inode it named (ENOENT if absent).</summary>
    public uint Remove(ReadOnlySpan<byte> name)
    {
        var wanted = name.ToArray();
        uint blocks = Blocks;
        for (uint lblk = 0; lblk < blocks; lblk++)
        {
            var (phys, block) = ReadDirBlock(lblk);
            if (IsDxBlock(lblk, block)) continue;
            var entries = ParseLeaf(block, out bool dotFirst);
            int i = entries.FindIndex(e => e.Name.AsSpan().SequenceEqual(wanted));
            if (i < 0) continue;
            uint ino = entries[i].Ino;
            entries.RemoveAt(i);
            WriteLeaf(phys, entries, dotFirst);
            return ino;
        }
        throw new Ext4Exception(Errno.ENOENT, "no such entry");
    }

    /// <summary>The entries of the directory other than "." and ".." (for rmdir's emptiness check).</summary>
    public bool IsEmpty()
    {
        for (uint lblk = 0; lblk < Blocks; lblk++)
        {
            var (_, block) = ReadDirBlock(lblk);
            if (IsDxBlock(lblk, block)) continue;
            foreach (var e in ParseLeaf(block, out _))
                if (!(e.Name is [(byte)'.'] or [(byte)'.', (byte)'.'])) return false;
        }
        return true;
    }

    /// <summary>Points ".." at a new parent (a directory renamed into another one).</summary>
    public void SetParent(uint parent)
    {
        var (phys, block) = ReadDirBlock(0);
        if (dir.Parsed.IsIndexedDir && (fs.Super.FeatureCompat & Features.CompatDirIndex) != 0)
        {
            // dx root: "." (12 bytes) then ".." whose inode field is at 12; the dx tail checksum covers it.
            BinaryPrimitives.WriteUInt32LittleEndian(block.AsSpan(12), parent);
            SetDxChecksum(block, RootInfoOffset + block[RootInfoOffset + 5]);
            h.Dirty(phys, block);
            return;
        }
        var entries = ParseLeaf(block, out bool dotFirst);
        int i = entries.FindIndex(e => e.Name is [(byte)'.', (byte)'.']);
        if (i < 0) throw Ext4Exception.Corrupted($"directory {dir.Number} has no '..'");
        entries[i] = entries[i] with { Ino = parent };
        WriteLeaf(phys, entries, dotFirst);
    }

    /// <summary>Writes block 0 of a new directory: "." and "..".</summary>
    public void InitEmpty(uint parent)
    {
        var phys = AppendBlock();
        WriteLeaf(phys, [new Entry(dir.Number, DirFileType.Dir, [(byte)'.']), new Entry(parent, DirFileType.Dir, [(byte)'.', (byte)'.'])], true);
    }

    private uint Blocks => (uint)(dir.Size / (ulong)_bs);

    private void AddLinear(Entry entry)
    {
        int room = _bs - Tail;
        for (uint lblk = 0; lblk < Blocks; lblk++)
        {
            var (phys, block) = ReadDirBlock(lblk);
            var entries = ParseLeaf(block, out bool dotFirst);
            if (entries.Sum(e => e.Size) + entry.Size > room)
            {
                // ext4_add_entry: only a one-block directory is converted; a longer linear one
                // (made without dir_index) keeps growing linearly.
                if (Blocks == 1 && (fs.Super.FeatureCompat & Features.CompatDirIndex) != 0)
                {
                    MakeIndexed(phys, entries, entry);
                    return;
                }
                continue;
            }
            entries.Add(entry);
            WriteLeaf(phys, entries, dotFirst);
            return;
        }
        WriteLeaf(AppendBlock(), [entry], false);
    }

    // make_indexed_dir: block 0 keeps "." and ".." and becomes the dx_root (hash version
    // s_def_hash_version, one entry → block 1); its other entries move to block 1, which is then
    // split by hash like any full leaf, and the new name goes into the half its hash selects.
    private void MakeIndexed(ulong rootPhys, List<Entry> entries, Entry entry)
    {
        if (entries.Count < 2 || entries[0].Name is not [(byte)'.'] || entries[1].Name is not [(byte)'.', (byte)'.'])
            throw Ext4Exception.Corrupted($"directory {dir.Number}: block 0 does not start with '.' and '..'");
        var moved = entries.Skip(2).ToList();
        if (moved.Count < 2) throw Ext4Exception.Corrupted($"directory {dir.Number}: full block 0 with {moved.Count} names");
        var leafPhys = AppendBlock(); // logical block 1
        dir.Flags |= InodeFlags.Index;

        var root = new byte[_bs];
        WriteFakeDirent(root, 0, entries[0], 12);
        WriteFakeDirent(root, 12, entries[1], _bs - 12);
        byte stored = fs.Super.DefHashVersion;
        root[RootInfoOffset + 4] = stored;
        root[RootInfoOffset + 5] = RootEntriesOffset - RootInfoOffset; // info_length 8
        int limit = (_bs - RootEntriesOffset) / DxEntrySize - (fs.Super.HasMetadataCsum ? 1 : 0);
        BinaryPrimitives.WriteUInt16LittleEndian(root.AsSpan(RootEntriesOffset), (ushort)limit);
        BinaryPrimitives.WriteUInt16LittleEndian(root.AsSpan(RootEntriesOffset + 2), 1);
        BinaryPrimitives.WriteUInt32LittleEndian(root.AsSpan(RootEntriesOffset + 4), 1);
        var frame = new Frame(rootPhys, root, RootEntriesOffset, 0);
        WriteDx(frame);

        var version = EffectiveVersion(stored);
        SplitLeaf([frame], leafPhys, moved, entry, Hash(entry.Name, version), version);
    }

    private static void WriteFakeDirent(byte[] block, int pos, Entry e, int recLen)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(block.AsSpan(pos), e.Ino);
        BinaryPrimitives.WriteUInt16LittleEndian(block.AsSpan(pos + 4), (ushort)recLen);
        block[pos + 6] = (byte)e.Name.Length;
        block[pos + 7] = e.Type;
        e.Name.CopyTo(block, pos + 8);
    }

    // The legacy, half_md4 and tea hashes have unsigned variants, chosen by the superblock's s_flags.
    private DxHashVersion EffectiveVersion(byte stored)
    {
        var version = (DxHashVersion)stored;
        return (byte)version <= (byte)DxHashVersion.Tea && fs.Super.UnsignedDirHash ? version + 3 : version;
    }

    // One level of the index path: the block, where its (limit, count, entries) start, and the entry followed.
    private sealed class Frame(ulong phys, byte[] block, int offset, int at)
    {
        public ulong Phys = phys;
        public byte[] Block = block;
        public int Offset = offset;
        public int At = at;
        public int Count => BinaryPrimitives.ReadUInt16LittleEndian(Block.AsSpan(Offset + 2));
        public int Limit => BinaryPrimitives.ReadUInt16LittleEndian(Block.AsSpan(Offset));
    }

    private void AddIndexed(Entry entry)
    {
        var (rootPhys, root) = ReadDirBlock(0);
        var version = EffectiveVersion(root[RootInfoOffset + 4]);
        int levels = root[RootInfoOffset + 6];
        uint hash = Hash(entry.Name, version);

        // Walk to the leaf, keeping the index path (dx_probe).
        var frames = new List<Frame>();
        int rootOffset = RootInfoOffset + root[RootInfoOffset + 5];
        frames.Add(new Frame(rootPhys, root, rootOffset, Probe(root, rootOffset, hash)));
        for (int l = 0; l < levels; l++)
        {
            var f = frames[^1];
            var (p, b) = ReadDirBlock(BlockAt(f.Block, f.Offset, f.At));
            frames.Add(new Frame(p, b, NodeEntriesOffset, Probe(b, NodeEntriesOffset, hash)));
        }
        var last = frames[^1];
        var (leafPhys, leafBlock) = ReadDirBlock(BlockAt(last.Block, last.Offset, last.At));
        var entries = ParseLeaf(leafBlock, out _);
        if (entries.Sum(e => e.Size) + entry.Size <= _bs - Tail)
        {
            entries.Add(entry);
            WriteLeaf(leafPhys, entries, false);
            return;
        }
        SplitLeaf(frames, leafPhys, entries, entry, hash, version);
    }

    // do_split: the full leaf's entries sorted by hash; from the highest hash down they move to a
    // new block while the moved size stays under half a block (an entry moves unless more than
    // half of it would cross the middle); if that leaves the first entry alone, the split is by
    // count. The new block is indexed by its first hash, +1 (continued) when that hash also ends
    // the lower block. The new name joins the half its hash falls in.
    private void SplitLeaf(List<Frame> frames, ulong leafPhys, List<Entry> entries, Entry entry, uint entryHash, DxHashVersion version)
    {
        var sorted = entries.Select((e, i) => (Hash: Hash(e.Name, version), Index: i)).OrderBy(x => x.Hash).ToList();
        int size = 0, move = 0, k;
        for (k = sorted.Count - 1; k >= 0; k--)
        {
            int s = entries[sorted[k].Index].Size;
            if (size + s / 2 > _bs / 2) break;
            size += s;
            move++;
        }
        int split = Math.Max(1, k > 0 ? sorted.Count - move : sorted.Count / 2);
        uint hash2 = sorted[split].Hash;
        uint continued = sorted[split - 1].Hash == hash2 ? 1u : 0u;
        var movedIdx = sorted.Skip(split).Select(x => x.Index).ToHashSet();
        var lower = entries.Where((_, i) => !movedIdx.Contains(i)).ToList(); // dx_pack_dirents keeps order
        var upper = sorted.Skip(split).Select(x => entries[x.Index]).ToList(); // moved in hash order
        var target = entryHash >= hash2 ? upper : lower;
        if (target.Sum(e => e.Size) + entry.Size > _bs - Tail)
            throw new Ext4Exception(Errno.ENOSPC, $"directory {dir.Number}: no room after a leaf split");
        target.Add(entry);
        uint newLblk = Blocks;
        var newPhys = AppendBlock();
        WriteLeaf(leafPhys, lower, false);
        WriteLeaf(newPhys, upper, false);
        InsertIndex(frames, frames.Count - 1, hash2 + continued, newLblk);
    }

    // dx_insert_block, growing the index when the node is full: a full non-root node splits in
    // two (its upper half indexed in the parent); a full root moves its entries into a new node
    // and the tree gains a level — as far as the feature set allows (2 levels, 3 with large_dir).
    private void InsertIndex(List<Frame> frames, int level, uint hash, uint block)
    {
        var f = frames[level];
        if (f.Count < f.Limit)
        {
            var b = f.Block;
            int pos = f.Offset + (f.At + 1) * DxEntrySize, end = f.Offset + f.Count * DxEntrySize;
            b.AsSpan(pos, end - pos).CopyTo(b.AsSpan(pos + DxEntrySize));
            BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(pos), hash);
            BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(pos + 4), block);
            BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(f.Offset + 2), (ushort)(f.Count + 1));
            WriteDx(f);
            return;
        }
        int maxLevels = fs.Super.HasLargeDir ? 3 : 2;
        if (level == 0)
        {
            int levels = f.Block[RootInfoOffset + 6];
            if (levels + 1 >= maxLevels) throw new Ext4Exception(Errno.ENOSPC, $"directory {dir.Number}: index full");
            // The root's entries move to a new node; the root keeps one entry pointing at it.
            uint nodeLblk = Blocks;
            var node = NewDxNode(AppendBlock(), f.Block.AsSpan(f.Offset, f.Count * DxEntrySize), f.Count);
            BinaryPrimitives.WriteUInt16LittleEndian(f.Block.AsSpan(f.Offset + 2), 1);
            BinaryPrimitives.WriteUInt32LittleEndian(f.Block.AsSpan(f.Offset + 4), nodeLblk);
            f.Block[RootInfoOffset + 6] = (byte)(levels + 1);
            node.At = f.At;
            f.At = 0;
            WriteDx(f);
            frames.Insert(1, node);
            InsertIndex(frames, 1, hash, block);
            return;
        }
        // Split a full node: the upper half goes to a new node indexed right after it in the parent.
        int half = f.Count / 2;
        uint upperHash = BinaryPrimitives.ReadUInt32LittleEndian(f.Block.AsSpan(f.Offset + half * DxEntrySize));
        uint upperLblk = Blocks;
        var upper = NewDxNode(AppendBlock(), f.Block.AsSpan(f.Offset + half * DxEntrySize, (f.Count - half) * DxEntrySize), f.Count - half);
        BinaryPrimitives.WriteUInt16LittleEndian(f.Block.AsSpan(f.Offset + 2), (ushort)half);
        bool pendingInUpper = f.At >= half;
        if (pendingInUpper) upper.At = f.At - half;
        WriteDx(f);
        InsertIndex(frames, level - 1, upperHash, upperLblk); // may grow the index above (frames shift)
        int idx = frames.IndexOf(f);
        if (pendingInUpper) frames[idx] = upper;
        InsertIndex(frames, idx, hash, block);
    }

    // A dx node block: a fake empty entry spanning the block, then limit, count and the entries.
    private Frame NewDxNode(ulong phys, ReadOnlySpan<byte> entries, int count)
    {
        var b = new byte[_bs];
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(4), (ushort)(_bs == 65536 ? 0 : _bs));
        int limit = (_bs - NodeEntriesOffset) / DxEntrySize - (fs.Super.HasMetadataCsum ? 1 : 0);
        entries.CopyTo(b.AsSpan(NodeEntriesOffset));
        // Entry 0's hash slot holds limit and count; its block number stays.
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(NodeEntriesOffset), (ushort)limit);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(NodeEntriesOffset + 2), (ushort)count);
        var f = new Frame(phys, b, NodeEntriesOffset, 0);
        WriteDx(f);
        return f;
    }

    private void WriteDx(Frame f)
    {
        SetDxChecksum(f.Block, f.Offset);
        h.Dirty(f.Phys, f.Block.ToArray());
    }

    private uint Hash(byte[] name, DxHashVersion version)
    {
        if (!DxHash.TryCompute(name, version, fs.Super.HashSeed, out uint hash, out _))
            throw new Ext4Exception(Errno.EOPNOTSUPP, $"directory {dir.Number}: hash version {(byte)version}");
        return hash;
    }

    // The last index entry whose hash is <= hash (entry 0 covers everything below entry 1).
    private static int Probe(byte[] node, int offset, uint hash)
    {
        int count = BinaryPrimitives.ReadUInt16LittleEndian(node.AsSpan(offset + 2));
        int at = 0;
        for (int i = 1; i < count; i++)
            if (BinaryPrimitives.ReadUInt32LittleEndian(node.AsSpan(offset + i * DxEntrySize)) <= hash) at = i;
        return at;
    }

    private static uint BlockAt(byte[] node, int offset, int i) =>
        BinaryPrimitives.ReadUInt32LittleEndian(node.AsSpan(offset + i * DxEntrySize + 4)) & 0x0FFFFFFF;

    private void SetDxChecksum(byte[] block, int offset)
    {
        if (!fs.Super.HasMetadataCsum) return;
        int limit = BinaryPrimitives.ReadUInt16LittleEndian(block.AsSpan(offset));
        int count = BinaryPrimitives.ReadUInt16LittleEndian(block.AsSpan(offset + 2));
        int tail = offset + limit * DxEntrySize;
        block.AsSpan(tail + 4, 4).Clear();
        uint crc = Crc.Crc32c(dir.CsumSeed, block.AsSpan(0, offset + count * DxEntrySize));
        crc = Crc.Crc32c(crc, block.AsSpan(tail, 8));
        BinaryPrimitives.WriteUInt32LittleEndian(block.AsSpan(tail + 4), crc);
    }

    // The dx root (block 0) and dx nodes (one fake empty entry spanning the block) hold no names.
    private bool IsDxBlock(uint lblk, byte[] block)
    {
        if (!dir.Parsed.IsIndexedDir) return false;
        if (lblk == 0) return true;
        return BinaryPrimitives.ReadUInt32LittleEndian(block) == 0 && BinaryPrimitives.ReadUInt16LittleEndian(block.AsSpan(4)) == _bs;
    }

    private (ulong Phys, byte[] Block) ReadDirBlock(uint lblk)
    {
        var run = BlockMapper.For(fs, dir.Parsed).Map(lblk, 1);
        if (run.IsHole) throw Ext4Exception.Corrupted($"directory {dir.Number} has a hole at block {lblk}");
        var block = new byte[_bs];
        fs.Device.Read((long)run.Physical * _bs, block);
        return (run.Physical, block);
    }

    private List<Entry> ParseLeaf(byte[] block, out bool dotFirst)
    {
        var list = new List<Entry>();
        var it = new DirentIterator(block.AsSpan(0, _bs - Tail), fs.Super, dir.Number);
        while (it.MoveNext())
            if (it.Inode != 0) list.Add(new Entry(it.Inode, it.FileType, it.Name.ToArray()));
        dotFirst = list.Count > 0 && list[0].Name is [(byte)'.'];
        return list;
    }

    // Packs entries in order; the last takes the rest of the block up to the checksum tail.
    private void WriteLeaf(ulong phys, List<Entry> entries, bool dotFirst)
    {
        _ = dotFirst;
        var block = new byte[_bs];
        int room = _bs - Tail, pos = 0;
        if (entries.Count == 0)
            BinaryPrimitives.WriteUInt16LittleEndian(block.AsSpan(4), (ushort)room);
        for (int i = 0; i < entries.Count; i++)
        {
            var e = entries[i];
            int recLen = i == entries.Count - 1 ? room - pos : e.Size;
            BinaryPrimitives.WriteUInt32LittleEndian(block.AsSpan(pos), e.Ino);
            BinaryPrimitives.WriteUInt16LittleEndian(block.AsSpan(pos + 4), (ushort)recLen);
            block[pos + 6] = (byte)e.Name.Length;
            block[pos + 7] = e.Type;
            e.Name.CopyTo(block, pos + 8);
            pos += recLen;
        }
        if (Tail != 0)
        {
            var t = block.AsSpan(_bs - TailSize);
            BinaryPrimitives.WriteUInt16LittleEndian(t[4..], TailSize);
            t[7] = 0xDE;
            BinaryPrimitives.WriteUInt32LittleEndian(t[8..], Crc.Crc32c(dir.CsumSeed, block.AsSpan(0, _bs - TailSize)));
        }
        h.Dirty(phys, block);
    }

    // A new block at the end of the directory: allocated near the last one, mapped, size and i_blocks grown.
    private ulong AppendBlock()
    {
        uint lblk = Blocks;
        var tree = new ExtentTree(fs, h, dir, alloc);
        var last = tree.ReadAll().LastOrDefault();
        ulong goal = last == default ? 0 : last.Physical + last.Length;
        var mapped = new ClusterMap(fs, h, dir, tree, alloc).MapHole(lblk, 1, unwritten: false, goal);
        dir.Size += (ulong)_bs;
        return mapped.Physical;
    }
}
