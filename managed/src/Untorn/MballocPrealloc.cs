using System.Collections.Concurrent;
using System.Numerics;

namespace Untorn;

/// <summary>
/// Clusters for a file's logical range [Logical, Logical + Length) (ext4_allocation_request with an
/// inode): Align > 1 asks for exactly Length clusters at a physical multiple of Align; otherwise
/// fewer may come back. Goal is the physical cluster wanted for Logical (after the previous extent).
/// </summary>
internal readonly record struct FileAllocRequest(ulong Inode, ulong Logical, ulong Length, ulong Align = 1, ulong Goal = 0)
{
    /// <summary>i_size in bytes: ext4 sizes the preallocation window by the larger of it and the request's end.</summary>
    public ulong FileSize { get; init; }
    /// <summary>The mapped logical cluster just before the request and its physical cluster (ar->lleft/pleft).</summary>
    public (ulong Logical, ulong Physical)? Left { get; init; }
    /// <summary>The mapped logical cluster just after the request and its physical cluster (ar->lright/pright).</summary>
    public (ulong Logical, ulong Physical)? Right { get; init; }
    /// <summary>Allocate only what is asked (EXT4_MB_HINT_NOPREALLOC: a tail, a file being closed).</summary>
    public bool NoPrealloc { get; init; }
}

// Inode preallocation (ext4_prealloc_space of type MB_INODE_PA): a growing file's request is
// enlarged to ext4's size classes (ext4_mb_normalize_request), the enlarged run is taken from the
// buddy at once, and what the request did not use stays reserved in memory for the file's next
// logical clusters — never on disk. The buddy counts preallocated clusters as used, so no one
// else gets them; they are given back on discard, and all files' are when space runs out.
internal sealed partial class Mballoc
{
    /// <summary>ext4's s_mb_max_inode_prealloc: past this many pieces an inode's oldest are given back.</summary>
    public const int MaxInodePreallocs = 512;

    private readonly ConcurrentDictionary<ulong, InodePreallocs> _prealloc = new();

    /// <summary>Logical clusters [Logical, End) of an inode reserved at Physical.</summary>
    internal sealed record Prealloc(ulong Logical, ulong Physical, ulong Length)
    {
        public ulong End => Logical + Length;
    }

    private sealed class InodePreallocs
    {
        public readonly Lock Lock = new();
        public readonly List<Prealloc> Pieces = [];
        public bool Dead; // discarded: late additions are given back instead
    }

    // The enlarged request: window [Start, Start + Length) holding the (possibly trimmed) request.
    private readonly record struct Window(ulong Start, ulong Length, ulong RequestLength, ulong Goal);

    public (ulong Start, ulong Length) AllocateForFile(ulong inode, ulong logical, ulong length, ulong align, ulong goal) =>
        AllocateForFile(new FileAllocRequest(inode, logical, length, align, goal));

    /// <summary>
    /// Clusters for a file: from the inode's preallocation when it holds the first logical cluster
    /// (at the right alignment), else a request normalized to ext4's size classes whose unused part
    /// becomes preallocation. An aligned request whose normalized size cannot be met falls back to
    /// its original size before failing; ENOSPC only once every file's preallocation was given back.
    /// </summary>
    public (ulong Start, ulong Length) AllocateForFile(in FileAllocRequest f)
    {
        bool whole = f.Align > 1;
        var original = Validate(new AllocRequest(f.Goal, f.Length, f.Align, Exact: whole));
        var pas = _prealloc.GetOrAdd(f.Inode, _ => new InodePreallocs());
        var released = new List<Prealloc>();
        (ulong, ulong)? hit;
        Window w = default;
        lock (pas.Lock)
        {
            hit = UsePreallocation(pas.Pieces, f.Logical, original.Length, f.Align, released);
            if (hit == null) w = Normalize(f, original.Length, pas.Pieces, released);
        }
        FreePieces(released);
        if (hit is { } h) return h;

        original = original with { Length = w.RequestLength };
        ulong windowStart = w.Start;
        (ulong Start, ulong Length)? got = null;
        if (w.Length > w.RequestLength)
            got = TryAllocate(Validate(new AllocRequest(w.Goal, w.Length, f.Align, whole, MinLength: w.RequestLength)));
        if (got == null)
        {
            windowStart = f.Logical; // the RFC's missing fallback: the original size
            got = TryAllocate(original);
            if (got == null && DiscardAllPreallocations() > 0) got = TryAllocate(original);
        }
        var (start, found) = got ?? throw NoSpace(original);
        return Place(pas, f.Logical, w.RequestLength, windowStart, start, found);
    }

    /// <summary>Gives back an inode's unused preallocation (on close, truncate or unlink).</summary>
    public void DiscardPreallocations(ulong inode)
    {
        if (!_prealloc.TryRemove(inode, out var pas)) return;
        List<Prealloc> pieces;
        lock (pas.Lock)
        {
            pas.Dead = true;
            pieces = [.. pas.Pieces];
            pas.Pieces.Clear();
        }
        FreePieces(pieces);
    }

    /// <summary>Gives back every file's unused preallocation; returns the clusters freed.</summary>
    public long DiscardAllPreallocations()
    {
        var pieces = new List<Prealloc>();
        foreach (var (_, pas) in _prealloc)
            lock (pas.Lock)
            {
                pieces.AddRange(pas.Pieces);
                pas.Pieces.Clear();
            }
        FreePieces(pieces);
        long total = 0;
        foreach (var p in pieces) total += (long)p.Length;
        return total;
    }

    internal IReadOnlyList<Prealloc> PreallocationsOf(ulong inode)
    {
        if (!_prealloc.TryGetValue(inode, out var pas)) return [];
        lock (pas.Lock) return pas.Pieces.ToArray();
    }

    /// <summary>
    /// ext4_mb_normalize_request's size classes, in clusters: the file's size (the larger of i_size
    /// and the request's end) rounds up to 16 KiB .. 1 MiB windows starting at logical 0; beyond
    /// that to a 2, 4 or 8 MiB window aligned on its own size (which class depends on the block
    /// size, as the kernel's NRL_CHECK_SIZE does); a request longer than 8 MiB is taken as is.
    /// </summary>
    internal (ulong Start, ulong Length) NormalizedWindow(ulong logical, ulong length, ulong fileSize)
    {
        const ulong KiB = 1024, MiB = 1024 * KiB;
        ulong cb = _clusterBytes, max = 2 * _blockBytes; // the kernel's "max = 2 << bsbits"
        ulong size = Math.Max((logical + length) * cb, fileSize), startOff = 0;
        if (size <= MiB) size = Math.Max(16 * KiB, BitOperations.RoundUpToPowerOf2(size));
        else if (size <= 4 * MiB || max <= 2 * KiB) (startOff, size) = (logical * cb / (2 * MiB) * (2 * MiB), 2 * MiB);
        else if (size <= 8 * MiB || max <= 4 * KiB) (startOff, size) = (logical * cb / (4 * MiB) * (4 * MiB), 4 * MiB);
        else if (length <= 8 * MiB / _blockBytes || max <= 8 * KiB) (startOff, size) = (logical * cb / (8 * MiB) * (8 * MiB), 8 * MiB);
        else (startOff, size) = (logical * cb, length * cb);
        ulong start = startOff / cb;
        return (start, Math.Max(1, (size + cb - 1) / cb));
    }

    // ext4_mb_use_inode_pa: the piece holding `logical` serves it from the matching physical
    // cluster on. An aligned request the piece cannot serve whole and aligned gives that part back.
    private static (ulong, ulong)? UsePreallocation(List<Prealloc> pieces, ulong logical, ulong length, ulong align, List<Prealloc> released)
    {
        for (int i = 0; i < pieces.Count; i++)
        {
            var p = pieces[i];
            if (logical < p.Logical || logical >= p.End) continue;
            ulong phys = p.Physical + (logical - p.Logical), avail = p.End - logical;
            pieces.RemoveAt(i);
            if (logical > p.Logical) pieces.Add(p with { Length = logical - p.Logical });
            if (align > 1 && (phys % align != 0 || avail < length))
            {
                released.Add(new Prealloc(logical, phys, avail));
                return null;
            }
            ulong take = Math.Min(length, avail);
            if (avail > take) pieces.Add(new Prealloc(logical + take, phys + take, avail - take));
            return (phys, take);
        }
        return null;
    }

    // The window of ext4_mb_normalize_request: the size class, not covering mapped neighbours or
    // other preallocated ranges of the file, at most a group, and for aligned requests starting a
    // whole number of alignment units before the request so the request's start stays aligned.
    private Window Normalize(in FileAllocRequest f, ulong length, List<Prealloc> pieces, List<Prealloc> released)
    {
        ulong logical = f.Logical;
        bool whole = f.Align > 1;
        // Pieces inside the request (not holding its first cluster): a shortenable request stops
        // before them (they serve the rest next time), an aligned one gives them back.
        for (int i = pieces.Count - 1; i >= 0; i--)
        {
            var p = pieces[i];
            if (p.End <= logical || p.Logical >= logical + length) continue;
            if (!whole) { length = p.Logical - logical; continue; }
            pieces.RemoveAt(i);
            ulong lo = Math.Max(p.Logical, logical), hi = Math.Min(p.End, logical + length);
            if (p.Logical < lo) pieces.Add(p with { Length = lo - p.Logical });
            if (p.End > hi) pieces.Add(new Prealloc(hi, p.Physical + (hi - p.Logical), p.End - hi));
            released.Add(new Prealloc(lo, p.Physical + (lo - p.Logical), hi - lo));
        }
        ulong requestEnd = logical + length;
        if (f.NoPrealloc) return new Window(logical, length, length, f.Goal);

        var (start, size) = NormalizedWindow(logical, length, f.FileSize);
        ulong end = start + size;
        // Without the left neighbour, the clusters before the request are taken to be mapped.
        if (f.Left is { } left) { if (start <= left.Logical) start = left.Logical + 1; }
        else start = Math.Max(start, logical);
        if (f.Right is { } right && end > right.Logical) end = right.Logical;
        start = Math.Min(start, logical);
        end = Math.Max(end, requestEnd);
        ulong cpg = _source.ClustersPerGroup;
        if (end - start > cpg)
        {
            end = Math.Max(start + cpg, requestEnd);
            start = end - cpg;
        }
        foreach (var p in pieces) // ext4_mb_pa_adjust_overlap
        {
            if (p.End <= start || p.Logical >= end) continue;
            if (p.End <= logical) start = p.End;
            else end = p.Logical;
        }
        if (whole) start = logical - (logical - start) / f.Align * f.Align;

        ulong goal = f.Goal;
        if (f.Left is { } l && l.Logical + 1 == start) goal = l.Physical + 1; // merge to the left
        else if (f.Right is { } r && r.Logical == end && r.Physical >= end - start) goal = r.Physical - (end - start);
        else if (f.Goal >= logical - start) goal = f.Goal - (logical - start);
        return new Window(start, end - start, length, goal);
    }

    // ext4_mb_new_inode_pa: a run found shorter than the window still holds the request's first
    // cluster; the request takes its part and the rest of the run becomes preallocation.
    private (ulong, ulong) Place(InodePreallocs pas, ulong logical, ulong length, ulong windowStart, ulong start, ulong found)
    {
        ulong w = windowStart;
        if (logical >= w + found)
        {
            w = logical + length >= found ? logical + length - found : 0;
            if (w > logical) w = logical;
        }
        ulong phys = start + (logical - w), used = Math.Min(length, w + found - logical);
        var keep = new List<Prealloc>(2);
        if (logical > w) keep.Add(new Prealloc(w, start, logical - w));
        if (w + found > logical + used) keep.Add(new Prealloc(logical + used, phys + used, w + found - logical - used));
        var giveBack = new List<Prealloc>();
        lock (pas.Lock)
        {
            foreach (var piece in keep)
            {
                // Another allocation for the same file may have reserved the range meanwhile.
                if (pas.Dead || pas.Pieces.Exists(p => p.Logical < piece.End && piece.Logical < p.End)) giveBack.Add(piece);
                else pas.Pieces.Add(piece);
            }
            int excess = pas.Pieces.Count - MaxInodePreallocs;
            if (excess > 0)
            {
                giveBack.AddRange(pas.Pieces.GetRange(0, excess));
                pas.Pieces.RemoveRange(0, excess);
            }
        }
        FreePieces(giveBack);
        return (phys, used);
    }

    private void FreePieces(List<Prealloc> pieces)
    {
        foreach (var p in pieces) Free(p.Physical, p.Length);
    }
}
