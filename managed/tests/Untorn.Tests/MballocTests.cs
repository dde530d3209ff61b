using System.Numerics;
using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// The allocator against brute force over plain bitmaps: buddy counts, aligned search completeness
/// (found iff an aligned free run exists), no cluster handed out twice, frees restoring the exact
/// free space, preallocation and the normalized-then-original fallback; and on real images, where
/// dumpe2fs must agree the chosen blocks were free and the alignment is absolute.
/// </summary>
public class MballocTests
{
    private sealed class SyntheticGroups(ulong firstStart, uint perGroup, bool[] used) : IGroupBitmapSource
    {
        public bool[] Used { get; } = used; // absolute cluster -> used, from firstStart
        public uint GroupCount { get; } = (uint)((used.Length + perGroup - 1) / perGroup);
        public uint ClustersPerGroup => perGroup;
        public ulong GroupStart(uint g) => firstStart + (ulong)g * perGroup;
        public uint ClustersInGroup(uint g) => (uint)Math.Min(perGroup, (ulong)Used.Length - (ulong)g * perGroup);
        public uint FreeHint(uint g) => (uint)Enumerable.Range((int)(g * perGroup), (int)ClustersInGroup(g)).Count(i => !Used[i]);
        public byte[] LoadBitmap(uint g)
        {
            var b = new byte[(perGroup + 7) / 8 + 8];
            for (uint i = 0; i < ClustersInGroup(g); i++)
                if (Used[g * perGroup + i]) b[i >> 3] |= (byte)(1 << (int)(i & 7));
            return b;
        }
    }

    private static SyntheticGroups MakeGroups(Random rng, ulong firstStart, uint perGroup, int groups, double density)
    {
        int total = (int)perGroup * (groups - 1) + rng.Next(1, (int)perGroup + 1); // a shorter last group
        var used = new bool[total];
        for (int i = 0; i < total; i++) used[i] = rng.NextDouble() < density;
        var s = new SyntheticGroups(firstStart, perGroup, used);
        Assert.Equal((uint)groups, s.GroupCount);
        return s;
    }

    private static bool RunFree(bool[] used, long from, long count) =>
        from >= 0 && from + count <= used.Length && !used.AsSpan((int)from, (int)count).Contains(true);

    [Fact]
    public void GroupBuddy_RandomMarksAndQueries_EqualBruteForce()
    {
        for (int seed = 0; seed < 300; seed++)
        {
            var rng = new Random(seed);
            ulong start = (ulong)rng.Next(0, 100_000);
            uint length = (uint)rng.Next(1, 3000);
            var used = new bool[length];
            double density = rng.NextDouble();
            var bitmap = new byte[(length + 7) / 8];
            for (uint i = 0; i < length; i++)
                if (rng.NextDouble() < density) { used[i] = true; bitmap[i >> 3] |= (byte)(1 << (int)(i & 7)); }
            var buddy = new GroupBuddy(start, length, bitmap);
            for (int step = 0; step < 60; step++)
            {
                if (rng.Next(3) == 0)
                {
                    uint a = (uint)rng.Next((int)length), n = (uint)rng.Next(1, (int)Math.Min(64, length - a) + 1);
                    bool makeUsed = rng.Next(2) == 0;
                    buddy.Mark(start + a, n, makeUsed);
                    for (uint i = a; i < a + n; i++) used[i] = makeUsed;
                }
                // per-order counts of free, absolutely aligned chunks wholly inside the group
                for (int k = 0; k <= buddy.MaxOrder; k++)
                {
                    long want = 0;
                    for (ulong c = (start + (1UL << k) - 1) >> k; ((c + 1) << k) <= start + length; c++)
                        if (RunFree(used, (long)((c << k) - start), 1L << k)) want++;
                    Assert.True(want == buddy.FreeChunks(k), $"seed {seed} step {step} order {k}: {buddy.FreeChunks(k)} != {want}");
                }
                Assert.Equal(used.LongCount(u => !u), buddy.FreeCount);
                ulong count = (ulong)rng.Next(1, 40), align = 1UL << rng.Next(0, 7);
                ulong from = start + (ulong)rng.Next((int)length);
                var got = buddy.FindAligned(count, align, from);
                bool exists = false;
                for (ulong s = (start + align - 1) / align * align; s + count <= start + length; s += align)
                    if (RunFree(used, (long)(s - start), (long)count)) { exists = true; break; }
                Assert.True(exists == got.HasValue, $"seed {seed} step {step}: count {count} align {align}: exists {exists}, found {got}");
                if (got is { } g)
                {
                    Assert.Equal(0UL, g % align);
                    Assert.True(RunFree(used, (long)(g - start), (long)count));
                }
            }
        }
    }

    [Fact]
    public void Allocate_RandomRequests_NoOverlapAlignedCompleteAndFreesRestore()
    {
        for (int seed = 0; seed < 40; seed++)
        {
            var rng = new Random(seed);
            var src = MakeGroups(rng, firstStart: (ulong)rng.Next(0, 2), perGroup: 1024, groups: rng.Next(1, 6), density: rng.NextDouble() * 0.9);
            var used = src.Used.ToArray();
            var m = new Mballoc(src, 4096);
            var live = new List<(ulong Start, ulong Len)>();
            for (int step = 0; step < 400; step++)
            {
                if (live.Count > 0 && rng.Next(3) == 0)
                {
                    int i = rng.Next(live.Count);
                    var (s0, n0) = live[i];
                    live.RemoveAt(i);
                    m.Free(s0, n0);
                    for (ulong c = s0; c < s0 + n0; c++) used[c - src.GroupStart(0)] = false;
                    Assert.Equal(used.LongCount(u => !u), m.FreeClusters());
                    continue;
                }
                ulong align = 1UL << rng.Next(0, 6), len = rng.Next(2) == 0 ? align : (ulong)rng.Next(1, 50);
                bool exact = rng.Next(2) == 0;
                var r = new AllocRequest(src.GroupStart(0) + (ulong)rng.Next(used.Length), len, align, exact);
                try
                {
                    var (s, n) = m.Allocate(r);
                    Assert.True(n >= 1 && n <= len);
                    if (r.MustBeWhole) { Assert.Equal(len, n); Assert.Equal(0UL, s % align); }
                    Assert.True(RunFree(used, (long)(s - src.GroupStart(0)), (long)n), $"seed {seed} step {step}: {s}+{n} was not free");
                    for (ulong c = s; c < s + n; c++) used[c - src.GroupStart(0)] = true;
                    live.Add((s, n));
                }
                catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC)
                {
                    // Complete search: nothing that fits may exist anywhere.
                    ulong baseC = src.GroupStart(0);
                    for (uint g = 0; g < src.GroupCount; g++)
                    {
                        ulong gs = src.GroupStart(g), ge = gs + src.ClustersInGroup(g);
                        for (ulong s = (gs + align - 1) / align * align; s + (r.MustBeWhole ? len : 1) <= ge; s += r.MustBeWhole ? align : 1)
                            Assert.False(RunFree(used, (long)(s - baseC), (long)(r.MustBeWhole ? len : 1)),
                                $"seed {seed} step {step}: ENOSPC but {s} holds {len} aligned to {align}");
                    }
                }
                Assert.Equal(used.LongCount(u => !u), m.FreeClusters());
            }
        }
    }

    [Fact]
    public void Allocate_ManyThreads_NeverHandsOutAClusterTwice()
    {
        var rng = new Random(9);
        var src = MakeGroups(rng, 1, 2048, 4, 0.3);
        var m = new Mballoc(src, 4096);
        long initialFree = m.FreeClusters();
        var got = new System.Collections.Concurrent.ConcurrentBag<(ulong, ulong)>();
        int clusters = 0;
        var seen = new HashSet<ulong>();
        var workers = Enumerable.Range(0, 6).Select(t => new Thread(() =>
        {
            var r = new Random(t);
            try
            {
                while (true)
                {
                    (ulong, ulong) a;
                    try { a = m.Allocate(new AllocRequest((ulong)r.Next(8000), 1UL << r.Next(0, 4), t % 2 == 0 ? 1UL << r.Next(0, 4) : 1)); }
                    catch (Ext4Exception) { a = m.Allocate(new AllocRequest(0, 1)); }
                    got.Add(a);
                }
            }
            catch (Ext4Exception e) when (e.Errno == Errno.ENOSPC) { }
        })).ToList();
        workers.ForEach(w => w.Start());
        workers.ForEach(w => w.Join());
        foreach (var (s, n) in got)
            for (ulong c = s; c < s + n; c++)
            {
                Assert.True(seen.Add(c), $"cluster {c} allocated twice");
                clusters++;
            }
        Assert.Equal(initialFree, clusters);
        Assert.Equal(0, m.FreeClusters());
    }

    [Fact]
    public void Allocate_BadAlignment_Einval()
    {
        var m = new Mballoc(MakeGroups(new Random(1), 0, 1024, 2, 0), 4096);
        Assert.Equal(Errno.EINVAL, Assert.Throws<Ext4Exception>(() => m.Allocate(new AllocRequest(0, 1, 2048))).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<Ext4Exception>(() => m.Allocate(new AllocRequest(0, 3, 3))).Errno);
        Assert.Equal(0UL, m.Allocate(new AllocRequest(0, 1024, 1024)).Start % 1024);
    }

    [Fact]
    public void AllocateForFile_SequentialGrowth_ContiguousFromPreallocationThenDiscarded()
    {
        var m = new Mballoc(MakeGroups(new Random(2), 0, 4096, 2, 0), 4096);
        long free0 = m.FreeClusters();
        ulong next = 0;
        ulong? expect = null;
        bool sawPrealloc = false;
        for (ulong logical = 0; logical < 70; logical++)
        {
            var (s, n) = m.AllocateForFile(7, logical, 1, 1, expect ?? 0);
            Assert.Equal(1UL, n);
            if (expect != null) Assert.Equal(expect.Value, s); // served from the preallocation, right after the last block
            expect = s + 1;
            next++;
            sawPrealloc |= m.PreallocationsOf(7).Count > 0;
        }
        Assert.True(sawPrealloc);
        Assert.NotEmpty(m.PreallocationsOf(7)); // 70 is inside the 64..128 window
        m.DiscardPreallocations(7);
        Assert.Empty(m.PreallocationsOf(7));
        Assert.Equal(free0 - 70, m.FreeClusters());
    }

    [Fact]
    public void AllocateForFile_NormalizedAlignedDoesNotFit_FallsBackToOriginalSize()
    {
        // Every 32-cluster window has one used cluster at its end: 20 clusters 16-aligned fit, the
        // normalized 32 (the 128 KiB window holding an 80 KiB request, 4 KiB clusters) never does.
        var used = new bool[4096];
        for (int i = 31; i < used.Length; i += 32) used[i] = true;
        var m = new Mballoc(new SyntheticGroups(0, 4096, used), 4096);
        var (s, n) = m.AllocateForFile(1, 0, 20, 16, 0);
        Assert.Equal(20UL, n);
        Assert.Equal(0UL, s % 16);
        Assert.Empty(m.PreallocationsOf(1)); // nothing left over: the original size was allocated
        // ...whereas without the obstacles the normalized size is taken and the rest preallocated.
        var roomy = new Mballoc(new SyntheticGroups(0, 4096, new bool[4096]), 4096);
        Assert.Equal(20UL, roomy.AllocateForFile(1, 0, 20, 16, 0).Length);
        Assert.Equal(12UL, roomy.PreallocationsOf(1).Single().Length);
    }

    /// <summary>On 1 KiB-block images groups start at block 1 + g*8192: alignment must still be absolute.</summary>
    [Theory]
    [InlineData("ext4-1k", 16)]
    [InlineData("ext4-1k", 64)]
    [InlineData("ext4-4k", 256)]
    [InlineData("ext4-metabg", 1024)]
    [InlineData("ext4-bigalloc", 4)]
    public void Allocate_OnRealImage_AbsoluteAlignmentAndDumpe2fsFree(string config, int alignClusters)
    {
        TestImages.Require();
        using var fs = Ext4Fs.Open(TestImages.ImagePath(config), new OpenOptions { ReadOnly = true });
        var m = new Mballoc(new FsGroupBitmaps(fs), (ulong)fs.Super.ClusterSize);
        uint ratio = (uint)(fs.Super.ClusterSize / fs.Super.BlockSize);
        var (_, dump) = Tools.Run(Tools.RequireTool("dumpe2fs"), [TestImages.ImagePath(config)]);
        var free = new HashSet<ulong>();
        foreach (Match r in Regex.Matches(dump, @"Free blocks: (.*)"))
            foreach (var range in r.Groups[1].Value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                var p = range.Split('-');
                for (ulong b = ulong.Parse(p[0]); b <= ulong.Parse(p[^1]); b++) free.Add(b / ratio);
            }
        for (int i = 0; i < 20; i++)
        {
            var (s, n) = m.Allocate(new AllocRequest((ulong)(i * 997), (ulong)alignClusters, (ulong)alignClusters));
            Assert.Equal(0UL, s * (ulong)fs.Super.ClusterSize % ((ulong)alignClusters * (ulong)fs.Super.ClusterSize));
            for (ulong c = s; c < s + n; c++) Assert.Contains(c, free);
        }
    }
}
