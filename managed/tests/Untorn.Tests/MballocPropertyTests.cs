using System.Numerics;
using CsCheck;

namespace Untorn.Tests;

/// <summary>
/// mballoc against a brute-force oracle over a plain bitmap (CsCheck properties): aligned requests
/// succeed iff an absolutely aligned free run exists in some group, starts are aligned, no cluster
/// is handed out twice, buddy counts and the group index equal a recount after every change, and
/// freeing everything restores the exact free space. Geometries include groups starting one
/// cluster off (s_first_data_block = 1) and at arbitrary offsets, and a shorter last group.
/// </summary>
public class MballocPropertyTests
{
    /// <summary>A disk of groups as a plain bitmap: the oracle. Counts bitmap loads.</summary>
    internal sealed class ModelDisk(ulong firstStart, uint perGroup, bool[] used) : IGroupBitmapSource
    {
        public bool[] Used { get; } = used; // index = absolute cluster - FirstStart
        public ulong FirstStart => firstStart;
        public int Loads;
        public uint GroupCount { get; } = (uint)((used.Length + perGroup - 1) / perGroup);
        public uint ClustersPerGroup => perGroup;
        public ulong GroupStart(uint g) => firstStart + (ulong)g * perGroup;
        public uint ClustersInGroup(uint g) => (uint)Math.Min(perGroup, (ulong)Used.Length - (ulong)g * perGroup);
        public uint FreeHint(uint g)
        {
            uint n = 0;
            for (uint i = 0; i < ClustersInGroup(g); i++) if (!Used[g * perGroup + i]) n++;
            return n;
        }
        public byte[] LoadBitmap(uint g)
        {
            Interlocked.Increment(ref Loads);
            var b = new byte[(perGroup + 7) / 8];
            for (uint i = 0; i < ClustersInGroup(g); i++)
                if (Used[g * perGroup + i]) b[i >> 3] |= (byte)(1 << (int)(i & 7));
            return b;
        }
        public bool IsUsed(ulong cluster) => Used[cluster - firstStart];
        public void Set(ulong cluster, ulong count, bool used)
        {
            for (ulong c = cluster; c < cluster + count; c++) Used[c - firstStart] = used;
        }

        /// <summary>Brute force: does some group hold `count` free clusters at an absolute multiple of `align`?</summary>
        public ulong? FirstAlignedRun(ulong count, ulong align, Func<ulong, bool> free)
        {
            for (uint g = 0; g < GroupCount; g++)
            {
                ulong gs = GroupStart(g), ge = gs + ClustersInGroup(g);
                for (ulong s = (gs + align - 1) / align * align; s + count <= ge; s += align)
                {
                    ulong c = s;
                    while (c < s + count && free(c)) c++;
                    if (c == s + count) return s;
                }
            }
            return null;
        }
    }

    internal sealed record Geometry(ulong FirstStart, uint PerGroup, int Groups, int LastLength, (int Free, int Used)[] Pattern)
    {
        public ModelDisk Build()
        {
            int total = (int)PerGroup * (Groups - 1) + Math.Min(LastLength, (int)PerGroup);
            var used = new bool[total];
            int i = 0;
            for (int p = 0; i < total; p = (p + 1) % Pattern.Length)
            {
                var (free, busy) = Pattern[p];
                if (free + busy == 0) { i++; continue; }
                i += free;
                for (int j = 0; j < busy && i < total; j++) used[i++] = true;
            }
            return new ModelDisk(FirstStart, PerGroup, used);
        }
    }

    // Offsets 0 and 1 are the real layouts (1 KiB blocks start groups at block 1); others shift
    // absolute alignment against group-relative offsets arbitrarily.
    internal static readonly Gen<Geometry> GenGeometry =
        Gen.Select(Gen.OneOf(Gen.Const(0UL), Gen.Const(1UL), Gen.ULong[2, 5000]), Gen.Int[1, 48].Select(x => (uint)x * 8), Gen.Int[1, 4], Gen.Int[1, 384],
            Gen.Select(Gen.Int[0, 40], Gen.Int[0, 40]).Array[1, 12],
            (first, per, groups, last, pattern) => new Geometry(first, per, groups, last, pattern));

    private static void CheckConsistent(Mballoc m, ModelDisk disk, HashSet<ulong> preallocated)
    {
        for (uint g = 0; g < disk.GroupCount; g++)
        {
            var b = m.Buddy(g);
            ulong gs = disk.GroupStart(g);
            for (ulong c = gs; c < gs + disk.ClustersInGroup(g); c++)
                Assert.True(b.IsFree(c) == (!disk.IsUsed(c) && !preallocated.Contains(c)),
                    $"cluster {c}: buddy free {b.IsFree(c)}, disk used {disk.IsUsed(c)}, preallocated {preallocated.Contains(c)}");
            int largest = -1;
            for (int k = 0; k <= b.MaxOrder; k++)
            {
                long want = 0;
                for (ulong chunk = (gs + (1UL << k) - 1) >> k; (chunk + 1) << k <= gs + disk.ClustersInGroup(g); chunk++)
                {
                    bool free = true;
                    for (ulong c = chunk << k; c < (chunk + 1) << k && free; c++) free = b.IsFree(c);
                    if (free) want++;
                }
                Assert.True(want == b.FreeChunks(k), $"group {g} order {k}: buddy {b.FreeChunks(k)}, recount {want}");
                if (want > 0) largest = k;
            }
            Assert.Equal(largest, b.LargestFreeOrder);
            Assert.Equal(largest, m.IndexedOrder(g));
        }
    }

    [Fact]
    public void Allocate_AlignedRequest_SucceedsIffAnAlignedFreeRunExists()
    {
        Gen.Select(GenGeometry, Gen.Int[0, 9], Gen.Int[1, 400], Gen.ULong[0, 20_000], Gen.Bool).Sample((geo, alignLog, len, goal, lengthIsAlign) =>
        {
            var disk = geo.Build();
            var m = new Mballoc(disk, 4096);
            ulong align = Math.Min(1UL << alignLog, m.MaxAlign);
            ulong count = lengthIsAlign ? align : (ulong)len;
            var before = (bool[])disk.Used.Clone();
            var expected = disk.FirstAlignedRun(count, align, c => !disk.IsUsed(c));
            (ulong Start, ulong Length)? got = null;
            try { got = m.Allocate(new AllocRequest(disk.FirstStart + goal, count, align, Exact: true)); }
            catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC) { }
            catch (Ext4Exception e) when (e.Errno == Errno.EINVAL && count > disk.ClustersPerGroup) { return; }
            Assert.True(expected.HasValue == got.HasValue, $"oracle {expected}, allocator {got}");
            if (got is not { } run) return;
            Assert.Equal(count, run.Length);
            Assert.Equal(0UL, run.Start % align);
            for (ulong c = run.Start; c < run.Start + run.Length; c++) Assert.False(before[c - disk.FirstStart], $"cluster {c} was in use");
            // The run lies inside one group.
            ulong g = (run.Start - disk.FirstStart) / disk.ClustersPerGroup;
            Assert.True(run.Start + run.Length <= disk.GroupStart((uint)g) + disk.ClustersInGroup((uint)g));
        }, iter: 3000);
    }

    // One step of a workload: 0 aligned, 1 shortenable, 2 file (append), 3 aligned file, 4 free, 5 discard.
    internal sealed record Op(int Kind, int AlignLog, int Length, int Goal, int Inode, int Pick, int Gap);

    private static readonly Gen<Op> GenOp = Gen.Select(Gen.Int[0, 5], Gen.Int[0, 6], Gen.Int[1, 70], Gen.Int[0, 20_000], Gen.Int[1, 4], Gen.Int[0, 1000], Gen.Int[0, 3],
        (k, a, l, g, i, p, gap) => new Op(k, a, l, g, i, p, gap));

    [Fact]
    public void Allocate_RandomWorkloads_NoDoubleHandoutCountsExactFreesRestore()
    {
        Gen.Select(GenGeometry, GenOp.Array[1, 60]).Sample((geo, ops) =>
        {
            var disk = geo.Build();
            var initial = (bool[])disk.Used.Clone();
            var m = new Mballoc(disk, 4096);
            var live = new List<(ulong Start, ulong Length)>();
            var nextLogical = new Dictionary<int, ulong>();
            foreach (var op in ops)
            {
                ulong align = Math.Min(1UL << op.AlignLog, m.MaxAlign);
                ulong goal = disk.FirstStart + (ulong)op.Goal;
                (ulong Start, ulong Length)? got = null;
                bool whole = op.Kind == 0 || (op.Kind == 3 && align > 1); // a file request aligned to 1 may come back shorter
                ulong want = op.Kind == 0 || op.Kind == 3 ? Math.Min((ulong)op.Length, disk.ClustersPerGroup) : (ulong)op.Length;
                try
                {
                    switch (op.Kind)
                    {
                        case 0: got = m.Allocate(new AllocRequest(goal, want, align, Exact: true)); break;
                        case 1: got = m.Allocate(new AllocRequest(goal, want, MinLength: (ulong)op.Pick % want + 1)); break;
                        case 2 or 3:
                        {
                            ulong logical = nextLogical.GetValueOrDefault(op.Inode) + (ulong)op.Gap;
                            if (op.Kind == 3) logical = (logical + align - 1) / align * align;
                            got = m.AllocateForFile(new FileAllocRequest((ulong)op.Inode, logical, want, op.Kind == 3 ? align : 1, goal)
                                { FileSize = logical * 4096 });
                            nextLogical[op.Inode] = logical + got.Value.Length;
                            break;
                        }
                        case 4 when live.Count > 0:
                        {
                            var (s, n) = live[op.Pick % live.Count];
                            live.RemoveAt(op.Pick % live.Count);
                            m.Free(s, n);
                            disk.Set(s, n, used: false);
                            break;
                        }
                        case 5: m.DiscardPreallocations((ulong)op.Inode); break;
                    }
                }
                catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC)
                {
                    // Complete: ENOSPC only after every preallocation was given back, and nothing fits.
                    Assert.Empty(AllPreallocated(m));
                    ulong need = whole ? want : 1, a = op.Kind == 0 || op.Kind == 3 ? align : 1;
                    Assert.Null(disk.FirstAlignedRun(need, a, c => !disk.IsUsed(c)));
                }
                if (got is { } run)
                {
                    if (whole) { Assert.Equal(want, run.Length); Assert.Equal(0UL, run.Start % align); }
                    else Assert.InRange(run.Length, 1UL, want);
                    for (ulong c = run.Start; c < run.Start + run.Length; c++) Assert.False(disk.IsUsed(c), $"cluster {c} handed out twice");
                    disk.Set(run.Start, run.Length, used: true);
                    live.Add(run);
                }
                CheckConsistent(m, disk, AllPreallocated(m));
            }
            foreach (var (s, n) in live) m.Free(s, n);
            m.DiscardAllPreallocations();
            disk.Set(disk.FirstStart, (ulong)disk.Used.Length, used: false);
            for (int i = 0; i < initial.Length; i++) disk.Used[i] = initial[i];
            CheckConsistent(m, disk, []);
            Assert.Equal(initial.LongCount(u => !u), m.FreeClusters());
        }, iter: 400);
    }

    private static HashSet<ulong> AllPreallocated(Mballoc m)
    {
        var set = new HashSet<ulong>();
        for (ulong inode = 0; inode <= 4; inode++)
            foreach (var p in m.PreallocationsOf(inode))
                for (ulong c = p.Physical; c < p.Physical + p.Length; c++) Assert.True(set.Add(c), $"cluster {c} preallocated twice");
        return set;
    }

    [Fact]
    public void GroupBuddy_RandomMarks_QueriesEqualBruteForce()
    {
        Gen.Select(Gen.ULong[0, 1 << 20], Gen.Int[1, 2500], Gen.Select(Gen.Int[0, 30], Gen.Int[0, 30]).Array[1, 10],
            Gen.Select(Gen.Int[0, 2499], Gen.Int[1, 200], Gen.Bool).Array[0, 20], Gen.Int[0, 11], Gen.Int[0, 2499]).Sample((start, length, pattern, marks, k, fromOff) =>
        {
            var used = new Geometry(start, (uint)length, 1, length, pattern).Build().Used;
            var bitmap = new byte[(length + 7) / 8];
            for (int i = 0; i < length; i++) if (used[i]) bitmap[i >> 3] |= (byte)(1 << (i & 7));
            var b = new GroupBuddy(start, (uint)length, bitmap);
            foreach (var (at, n, makeUsed) in marks)
            {
                int a = at % length, cnt = Math.Min(n, length - a);
                b.Mark(start + (ulong)a, (ulong)cnt, makeUsed);
                for (int i = a; i < a + cnt; i++) used[i] = makeUsed;
            }
            Assert.Equal(used.LongCount(u => !u), b.FreeCount);
            ulong from = start + (ulong)(fromOff % length);
            // FindChunk: the first free aligned chunk at or after the one holding `from`, wrapping.
            ulong? want = null;
            var chunks = new List<ulong>();
            for (ulong c = (start + (1UL << k) - 1) >> k; (c + 1) << k <= start + (ulong)length; c++)
                if (!used.AsSpan((int)((c << k) - start), 1 << k).Contains(true)) chunks.Add(c << k);
            want = chunks.Where(c => c >> k >= from >> k).Cast<ulong?>().FirstOrDefault() ?? chunks.Cast<ulong?>().FirstOrDefault();
            Assert.Equal(want, b.FindChunk(k, from));
            // FindLongest: a free run as long as the longest there is (capped).
            int longest = 0, cur = 0;
            foreach (bool u in used) { cur = u ? 0 : cur + 1; longest = Math.Max(longest, cur); }
            ulong cap = (ulong)(fromOff % 97 + 1);
            var run = b.FindLongest(cap, from);
            Assert.Equal(Math.Min(cap, (ulong)longest), run?.Length ?? 0);
            if (run is { } r)
                Assert.False(used.AsSpan((int)(r.Start - start), (int)r.Length).Contains(true));
        }, iter: 2000);
    }

    [Fact]
    public void Allocate_ManyThreadsWithPreallocation_NeverHandsOutAClusterTwice()
    {
        var disk = new Geometry(1, 2048, 6, 1500, [(30, 3), (7, 1), (100, 20)]).Build();
        var initial = (bool[])disk.Used.Clone();
        var m = new Mballoc(disk, 4096);
        var owner = new int[disk.Used.Length];
        long handedOut = 0;
        var workers = Enumerable.Range(1, 8).Select(t => new Thread(() =>
        {
            var rng = new Random(t);
            var mine = new List<(ulong, ulong)>();
            ulong logical = 0;
            for (int i = 0; i < 3000; i++)
            {
                (ulong Start, ulong Length) got;
                try
                {
                    int kind = rng.Next(4);
                    if (kind == 0 && mine.Count > 0)
                    {
                        int pick = rng.Next(mine.Count);
                        var (s, n) = mine[pick];
                        mine.RemoveAt(pick);
                        // Ownership ends before the clusters go back: another thread may get them at once.
                        for (ulong c = s; c < s + n; c++) Assert.Equal(t, Interlocked.Exchange(ref owner[c - disk.FirstStart], 0));
                        m.Free(s, n);
                        continue;
                    }
                    ulong align = 1UL << rng.Next(0, 5);
                    got = kind switch
                    {
                        1 => m.Allocate(new AllocRequest((ulong)rng.Next(12_000), align, align, Exact: true)),
                        2 => m.Allocate(new AllocRequest((ulong)rng.Next(12_000), (ulong)rng.Next(1, 40))),
                        _ => m.AllocateForFile(new FileAllocRequest((ulong)t, logical, (ulong)rng.Next(1, 9)) { FileSize = logical * 4096 }),
                    };
                    if (kind == 3) logical += got.Length;
                }
                catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC) { continue; }
                for (ulong c = got.Start; c < got.Start + got.Length; c++)
                    Assert.True(Interlocked.CompareExchange(ref owner[c - disk.FirstStart], t, 0) == 0 && !initial[c - disk.FirstStart],
                        $"cluster {c} handed to thread {t} while owned by {owner[c - disk.FirstStart]}");
                Interlocked.Add(ref handedOut, (long)got.Length);
                mine.Add(got);
            }
            foreach (var (s, n) in mine)
            {
                for (ulong c = s; c < s + n; c++) owner[c - disk.FirstStart] = 0;
                m.Free(s, n);
            }
        })).ToList();
        workers.ForEach(w => w.Start());
        workers.ForEach(w => w.Join());
        Assert.True(handedOut > 10_000, $"only {handedOut} clusters handed out");
        m.DiscardAllPreallocations();
        CheckConsistent(m, disk, []);
        Assert.Equal(initial.LongCount(u => !u), m.FreeClusters());
    }
}
