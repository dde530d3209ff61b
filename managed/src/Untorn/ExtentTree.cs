using System.Buffers.Binary;

namespace Untorn;

/// <summary>Where the extent tree gets and returns the blocks of its own index and leaf nodes.</summary>
internal interface IExtentBlockAllocator
{
    /// <summary>One block for a tree node, near <paramref name="goal"/>; ENOSPC when there is none.</summary>
    ulong AllocateNodeBlock(TransactionManager.Handle h, ulong goal);
    void FreeNodeBlock(TransactionManager.Handle h, ulong block);
    /// <summary>Sectors (512 bytes) one node block adds to i_blocks (a whole cluster with bigalloc).</summary>
    ulong NodeSectors { get; }
}

/// <summary>One mapping of a leaf: logical blocks [First, First + Length) at Physical.</summary>
public readonly record struct Extent(uint First, uint Length, ulong Physical, bool Unwritten)
{
    public const uint MaxInitLength = 32768, MaxUnwrittenLength = 32767;
    public ulong End => (ulong)First + Length;
}

/// <summary>
/// Changes an inode's extent tree inside a metadata handle (fs/ext4/extents.c): insert a mapping
/// (merging with neighbours), remove a logical range (trimming or splitting extents), convert
/// unwritten extents to written. A node that overflows is split and its new sibling indexed in
/// the parent; a full root moves into a new block and the tree grows a level; empty nodes are freed
/// and their index removed; every change to a node's first key is carried up the path, since the
/// kernel and e2fsck require an index key to equal its child's first key.
/// </summary>
internal sealed class ExtentTree(Ext4Fs fs, TransactionManager.Handle h, InodeBuffer inode, IExtentBlockAllocator alloc)
{
    private const int EntrySize = 12, RootCapacity = 4;
    private int BlockCapacity => (fs.Super.BlockSize - EntrySize) / EntrySize;

    private sealed class Node
    {
        public ulong Block; // 0: the root in i_block
        public int Depth;
        public List<Entry> Entries = [];
    }

    // A leaf extent (RawLength = length, + 32768 when unwritten) or an index entry (Physical = child).
    private record struct Entry(uint First, ulong Physical, ushort RawLength)
    {
        public bool Unwritten => RawLength > Extent.MaxInitLength;
        public uint Length => Unwritten ? RawLength - Extent.MaxInitLength : RawLength;
        public ulong End => (ulong)First + Length;
        public Extent ToExtent() => new(First, Length, Physical, Unwritten);
        public static Entry Of(Extent e) => new(e.First, e.Physical, (ushort)(e.Unwritten ? e.Length + Extent.MaxInitLength : e.Length));
    }

    private readonly record struct Step(Node Node, int Index);

    /// <summary>Makes i_block an empty depth-0 tree and sets EXTENTS_FL (a new file).</summary>
    public void InitEmpty()
    {
        inode.BlockArray.Clear();
        Store(new Node { Block = 0, Depth = 0 });
        inode.Flags |= InodeFlags.Extents;
    }

    /// <summary>Every leaf extent in logical order.</summary>
    public List<Extent> ReadAll()
    {
        var result = new List<Extent>();
        void walk(Node n)
        {
            foreach (var e in n.Entries)
            {
                if (n.Depth == 0) result.Add(e.ToExtent());
                else walk(Load(e.Physical, n.Depth - 1));
            }
        }
        walk(Root());
        return result;
    }

    /// <summary>Maps [First, First+Length) to Physical; the logical range must be a hole. Long extents are split.</summary>
    public void Insert(Extent e)
    {
        uint max = e.Unwritten ? Extent.MaxUnwrittenLength : Extent.MaxInitLength;
        while (e.Length > max)
        {
            Insert(e with { Length = max });
            e = new Extent(e.First + max, e.Length - max, e.Physical + max, e.Unwritten);
        }
        if (e.Length == 0) return;
        var path = FindPath(e.First);
        var leaf = path[^1].Node;
        int pos = leaf.Entries.FindIndex(x => x.First > e.First);
        if (pos < 0) pos = leaf.Entries.Count;
        if ((pos > 0 && leaf.Entries[pos - 1].End > e.First) || (pos < leaf.Entries.Count && e.End > leaf.Entries[pos].First))
            throw new InvalidOperationException($"inode {inode.Number}: extent {e} overlaps a mapped range");
        leaf.Entries.Insert(pos, Entry.Of(e));
        MergeAdjacent(leaf.Entries);
        WriteNode(path, path.Count - 1);
    }

    /// <summary>Unmaps [first, first+length); returns the physical runs that were mapped there (the caller frees them).</summary>
    public List<Extent> Remove(uint first, ulong length)
    {
        var removed = new List<Extent>();
        Rewrite(first, length, (e, a, b) =>
        {
            removed.Add(new Extent((uint)a, (uint)(b - a), e.Physical + (a - e.First), e.Unwritten));
            var pieces = new List<Entry>();
            if (a > e.First) pieces.Add(e with { RawLength = Raw((uint)(a - e.First), e.Unwritten) });
            if (b < e.End) pieces.Add(new Entry((uint)b, e.Physical + (b - e.First), Raw((uint)(e.End - b), e.Unwritten)));
            return pieces;
        });
        return removed;
    }

    /// <summary>Turns the unwritten parts of [first, first+length) into written extents (after their data landed).</summary>
    public void MarkWritten(uint first, ulong length) =>
        Rewrite(first, length, (e, a, b) =>
        {
            if (!e.Unwritten) return null;
            var pieces = new List<Entry>();
            if (a > e.First) pieces.Add(e with { RawLength = Raw((uint)(a - e.First), true) });
            pieces.Add(new Entry((uint)a, e.Physical + (a - e.First), Raw((uint)(b - a), false)));
            if (b < e.End) pieces.Add(new Entry((uint)b, e.Physical + (b - e.First), Raw((uint)(e.End - b), true)));
            return pieces;
        });

    // Visits the extents overlapping [first, first+length) in order; `change` gets one with the
    // overlap [a, b) and returns its replacement entries (null: keep it). Each change is written
    // (and the path re-walked) before the next, since a split may move entries between nodes.
    private void Rewrite(uint first, ulong length, Func<Entry, ulong, ulong, List<Entry>?> change)
    {
        ulong end = first + length, cur = first;
        while (cur < end && NextAtOrAfter((uint)Math.Min(cur, uint.MaxValue)) is { } hit)
        {
            var (path, i) = hit;
            var leaf = path[^1].Node;
            var e = leaf.Entries[i];
            if (e.First >= end) break;
            ulong a = Math.Max(cur, e.First), b = Math.Min(end, e.End);
            cur = b;
            if (change(e, a, b) is not { } pieces) continue;
            leaf.Entries.RemoveAt(i);
            leaf.Entries.InsertRange(i, pieces);
            MergeAdjacent(leaf.Entries);
            WriteNode(path, path.Count - 1);
        }
    }

    private static ushort Raw(uint length, bool unwritten) => (ushort)(unwritten ? length + Extent.MaxInitLength : length);

    // Merges logically and physically contiguous neighbours of the same kind, as ext4_ext_try_to_merge.
    private static void MergeAdjacent(List<Entry> entries)
    {
        for (int i = 0; i + 1 < entries.Count;)
        {
            var (l, r) = (entries[i], entries[i + 1]);
            uint max = l.Unwritten ? Extent.MaxUnwrittenLength : Extent.MaxInitLength;
            if (l.Unwritten == r.Unwritten && l.End == r.First && l.Physical + l.Length == r.Physical && l.Length + r.Length <= max)
            {
                entries[i] = l with { RawLength = Raw(l.Length + r.Length, l.Unwritten) };
                entries.RemoveAt(i + 1);
            }
            else i++;
        }
    }

    // The path to the leaf whose range holds `logical` (the leftmost leaf for keys before the first).
    private List<Step> FindPath(uint logical)
    {
        var path = new List<Step>();
        var node = Root();
        while (node.Depth > 0)
        {
            int i = node.Entries.FindLastIndex(x => x.First <= logical);
            if (i < 0) i = 0;
            path.Add(new Step(node, i));
            node = Load(node.Entries[i].Physical, node.Depth - 1);
        }
        path.Add(new Step(node, -1));
        return path;
    }

    // The first extent ending after `logical`, with its path; null when there is none.
    private (List<Step> Path, int Index)? NextAtOrAfter(uint logical)
    {
        var path = FindPath(logical);
        while (true)
        {
            var leaf = path[^1].Node;
            int i = leaf.Entries.FindIndex(x => x.End > logical);
            if (i >= 0) return (path, i);
            // Climb to the nearest ancestor with a next child, then take that subtree's leftmost leaf.
            int level = path.Count - 2;
            while (level >= 0 && path[level].Index + 1 >= path[level].Node.Entries.Count) level--;
            if (level < 0) return null;
            path.RemoveRange(level + 1, path.Count - level - 1);
            var step = path[level] with { Index = path[level].Index + 1 };
            path[level] = step;
            var node = Load(step.Node.Entries[step.Index].Physical, step.Node.Depth - 1);
            while (node.Depth > 0)
            {
                path.Add(new Step(node, 0));
                node = Load(node.Entries[0].Physical, node.Depth - 1);
            }
            path.Add(new Step(node, -1));
        }
    }

    // Writes path[level] after its entries changed: splits on overflow, frees when empty, and
    // corrects the parent's key; recurses up the path as far as the change reaches.
    private void WriteNode(List<Step> path, int level)
    {
        var node = path[level].Node;
        if (level > 0 && node.Entries.Count == 0)
        {
            h.Forget(node.Block);
            alloc.FreeNodeBlock(h, node.Block);
            inode.Sectors -= alloc.NodeSectors;
            path[level - 1].Node.Entries.RemoveAt(path[level - 1].Index);
            WriteNode(path, level - 1);
            return;
        }
        if (level == 0 && node.Entries.Count == 0) node.Depth = 0; // an emptied tree starts over as a leaf root
        int capacity = level == 0 ? RootCapacity : BlockCapacity;
        if (node.Entries.Count > capacity)
        {
            if (level == 0) GrowRoot(path);
            else Split(path, level);
            return;
        }
        Store(node);
        if (level > 0)
        {
            var parent = path[level - 1];
            var key = parent.Node.Entries[parent.Index];
            if (key.First != node.Entries[0].First)
            {
                parent.Node.Entries[parent.Index] = key with { First = node.Entries[0].First };
                WriteNode(path, level - 1);
            }
        }
    }

    // The root's entries move into a new block that becomes the root's only child (tree one level deeper).
    private void GrowRoot(List<Step> path)
    {
        var old = path[0];
        var root = old.Node;
        var child = new Node { Block = AllocateNode(), Depth = root.Depth, Entries = root.Entries };
        root.Entries = [new Entry(child.Entries[0].First, child.Block, 0)];
        root.Depth++;
        path[0] = new Step(root, 0);
        path.Insert(1, new Step(child, old.Index)); // the child holds the root's entries at the same positions
        WriteNode(path, 1);
        Store(root);
    }

    // An overflowing non-root node keeps its first half; the rest moves to a new sibling indexed right after it.
    // An append (the new entry is last) moves only that entry, so sequentially grown files get full nodes.
    private void Split(List<Step> path, int level)
    {
        var node = path[level].Node;
        int capacity = BlockCapacity;
        int keep = IsAppend(path, level) ? capacity : node.Entries.Count / 2;
        var sibling = new Node { Block = AllocateNode(), Depth = node.Depth, Entries = node.Entries.GetRange(keep, node.Entries.Count - keep) };
        node.Entries.RemoveRange(keep, node.Entries.Count - keep);
        Store(sibling);
        var parent = path[level - 1];
        parent.Node.Entries.Insert(parent.Index + 1, new Entry(sibling.Entries[0].First, sibling.Block, 0));
        Store(node);
        var key = parent.Node.Entries[parent.Index];
        if (key.First != node.Entries[0].First) parent.Node.Entries[parent.Index] = key with { First = node.Entries[0].First };
        WriteNode(path, level - 1);
    }

    // True when this node is the rightmost at every level (the file is growing at its end).
    private static bool IsAppend(List<Step> path, int level)
    {
        for (int l = 0; l < level; l++)
            if (path[l].Index != path[l].Node.Entries.Count - 1) return false;
        return true;
    }

    private ulong AllocateNode()
    {
        // Near the file's data: the first extent's physical block is a good goal.
        ulong goal = 0;
        var root = Root();
        if (root.Entries.Count > 0) goal = root.Entries[0].Physical;
        ulong block = alloc.AllocateNodeBlock(h, goal);
        inode.Sectors += alloc.NodeSectors;
        return block;
    }

    private Node Root() => Parse(inode.BlockArray, 0, -1, RootCapacity);

    private Node Load(ulong block, int expectedDepth)
    {
        fs.CheckDataBlocks(block, 1, $"inode {inode.Number}: extent node");
        var data = new byte[fs.Super.BlockSize];
        fs.Device.Read((long)block * fs.Super.BlockSize, data);
        return Parse(data, block, expectedDepth, BlockCapacity);
    }

    private Node Parse(ReadOnlySpan<byte> raw, ulong block, int expectedDepth, int capacity)
    {
        ushort magic = BinaryPrimitives.ReadUInt16LittleEndian(raw);
        int n = BinaryPrimitives.ReadUInt16LittleEndian(raw[2..]);
        int depth = BinaryPrimitives.ReadUInt16LittleEndian(raw[6..]);
        if (magic != ExtentMapper.Magic || n > capacity || depth > ExtentMapper.MaxDepth || (expectedDepth >= 0 && depth != expectedDepth))
            throw Ext4Exception.Corrupted($"inode {inode.Number}: bad extent node {(block == 0 ? "root" : block.ToString())}");
        var node = new Node { Block = block, Depth = depth };
        for (int i = 0; i < n; i++)
        {
            var e = raw[(EntrySize * (i + 1))..];
            uint first = BinaryPrimitives.ReadUInt32LittleEndian(e);
            node.Entries.Add(depth == 0
                ? new Entry(first, BinaryPrimitives.ReadUInt32LittleEndian(e[8..]) | (ulong)BinaryPrimitives.ReadUInt16LittleEndian(e[6..]) << 32, BinaryPrimitives.ReadUInt16LittleEndian(e[4..]))
                : new Entry(first, BinaryPrimitives.ReadUInt32LittleEndian(e[4..]) | (ulong)BinaryPrimitives.ReadUInt16LittleEndian(e[8..]) << 32, 0));
        }
        return node;
    }

    // Serializes a node: the root into i_block, a block node whole, with its checksum tail.
    private void Store(Node node)
    {
        bool root = node.Block == 0;
        int capacity = root ? RootCapacity : BlockCapacity;
        var raw = root ? new byte[Inode.BlockArraySize] : new byte[fs.Super.BlockSize];
        var span = raw.AsSpan();
        BinaryPrimitives.WriteUInt16LittleEndian(span, ExtentMapper.Magic);
        BinaryPrimitives.WriteUInt16LittleEndian(span[2..], (ushort)node.Entries.Count);
        BinaryPrimitives.WriteUInt16LittleEndian(span[4..], (ushort)capacity);
        BinaryPrimitives.WriteUInt16LittleEndian(span[6..], (ushort)node.Depth);
        for (int i = 0; i < node.Entries.Count; i++)
        {
            var e = span[(EntrySize * (i + 1))..];
            var x = node.Entries[i];
            BinaryPrimitives.WriteUInt32LittleEndian(e, x.First);
            if (node.Depth == 0)
            {
                BinaryPrimitives.WriteUInt16LittleEndian(e[4..], x.RawLength);
                BinaryPrimitives.WriteUInt16LittleEndian(e[6..], (ushort)(x.Physical >> 32));
                BinaryPrimitives.WriteUInt32LittleEndian(e[8..], (uint)x.Physical);
            }
            else
            {
                BinaryPrimitives.WriteUInt32LittleEndian(e[4..], (uint)x.Physical);
                BinaryPrimitives.WriteUInt16LittleEndian(e[8..], (ushort)(x.Physical >> 32));
            }
        }
        if (root)
        {
            raw.CopyTo(inode.BlockArray);
            return;
        }
        if (fs.Super.HasMetadataCsum)
        {
            int tail = EntrySize * (capacity + 1);
            BinaryPrimitives.WriteUInt32LittleEndian(span[tail..], Crc.Crc32c(inode.CsumSeed, span[..tail]));
        }
        h.Dirty(node.Block, raw);
    }
}
