using System.Numerics;
using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// The allocator against brute force over plain bitmaps: buddy counts, aligned search completeness
/// (found iff an aligned free run exists), no cluster handed out twice, frees restoring the exact
/// free space, preallocation and the normalized-then-original fallback; and on real images, where
/// dumpe2fs must agree the chosen blocks were free and the alignment is absolute.
/// </summary>
public partial class MballocTests
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

    private static MballocPropertyTests.ModelDisk Disk(ulong firstStart, uint perGroup, int clusters, Func<int, bool>? used = null)
    {
        var bits = new bool[clusters];
        if (used != null) for (int i = 0; i < clusters; i++) bits[i] = used(i);
        return new MballocPropertyTests.ModelDisk(firstStart, perGroup, bits);
    }

    /// <summary>
    /// Groups of 8192 starting at cluster 1 (1 KiB blocks): the group-relative offset 0 is never
    /// 8192-aligned, and an 8192-aligned cluster is the last of each group.
    /// </summary>
    [Fact]
    public void Allocate_FirstDataBlockOne_AlignmentIsAbsoluteNotGroupRelative()
    {
        var m = new Mballoc(Disk(1, 8192, 2 * 8192), 1024);
        Assert.Equal((4096UL, 4096UL), m.Allocate(new AllocRequest(1, 4096, 4096, Exact: true)));
        Assert.Equal((12288UL, 4096UL), m.Allocate(new AllocRequest(1, 4096, 4096, Exact: true)));
        // 4095 free clusters at the start of each group, but no 2048-aligned run of 4096 fits any more.
        Assert.Equal(Errno.ENOSPC, Assert.Throws<Ext4Exception>(() => m.Allocate(new AllocRequest(1, 4096, 2048, Exact: true))).Errno);
        var fresh = new Mballoc(Disk(1, 8192, 2 * 8192), 1024);
        Assert.Equal(Errno.ENOSPC, Assert.Throws<Ext4Exception>(() => fresh.Allocate(new AllocRequest(1, 8192, 8192, Exact: true))).Errno);
        Assert.Equal((8192UL, 1UL), fresh.Allocate(new AllocRequest(1, 1, 8192, Exact: true)));
        Assert.Equal((16384UL, 1UL), fresh.Allocate(new AllocRequest(1, 1, 8192, Exact: true)));
    }

    [Fact]
    public void Allocate_AlignmentOrLengthBeyondAGroup_Einval()
    {
        var m = new Mballoc(Disk(0, 1000, 3000), 4096);
        Assert.Equal(512UL, m.MaxAlign);
        Assert.Equal(Errno.EINVAL, Assert.Throws<Ext4Exception>(() => m.Allocate(new AllocRequest(0, 1, 1024, Exact: true))).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<Ext4Exception>(() => m.Allocate(new AllocRequest(0, 1001, 1, Exact: true))).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<Ext4Exception>(() => m.Allocate(new AllocRequest(0, 0))).Errno);
        Assert.Equal(1000UL, m.Allocate(new AllocRequest(0, 5000)).Length); // unaligned: capped at a group, as the kernel does
    }

    /// <summary>The group index: groups whose descriptor count rules out the chunk are never read.</summary>
    [Fact]
    public void Allocate_AlignedAmongThousandGroups_ReadsOnlyGroupsTheIndexOffers()
    {
        // Every group has 100 scattered free clusters (no 256-chunk possible) except group 700.
        var disk = Disk(0, 512, 1000 * 512, i => i / 512 == 700 ? i % 512 < 256 : i % 5 != 0 || i % 512 >= 500);
        var m = new Mballoc(disk, 4096);
        var (start, n) = m.Allocate(new AllocRequest(0, 256, 256, Exact: true));
        Assert.Equal((700UL * 512 + 256, 256UL), (start, n));
        Assert.InRange(disk.Loads, 1, 2); // the goal's group (tried first) and group 700
        Assert.Equal(1, m.CriterionHits(Criterion.Power2Aligned));
    }

    [Fact]
    public void Allocate_EachCriterion_SatisfiesTheRequestsItIsFor()
    {
        var fresh = new Mballoc(Disk(0, 1024, 2048), 4096);
        Assert.Equal((100UL, 10UL), fresh.Allocate(new AllocRequest(100, 10)));
        Assert.Equal(1, fresh.CriterionHits(Criterion.Goal));
        Assert.Equal(0UL, fresh.Allocate(new AllocRequest(105, 16)).Start % 16);
        Assert.Equal(1, fresh.CriterionHits(Criterion.Power2Aligned));
        Assert.Equal(10UL, fresh.Allocate(new AllocRequest(105, 10)).Length);
        Assert.Equal(1, fresh.CriterionHits(Criterion.GoalLenFast));

        // Free runs of 12 between single used clusters: no free 16-chunk anywhere.
        Func<int, bool> runsOf12 = i => i % 13 == 12;
        var frag = new Mballoc(Disk(0, 1024, 2048, runsOf12), 4096);
        Assert.Equal(11UL, frag.Allocate(new AllocRequest(12, 11)).Length);
        Assert.Equal(1, frag.CriterionHits(Criterion.GoalLenSlow));
        Assert.Equal(8UL, frag.Allocate(new AllocRequest(12, 64, MinLength: 8)).Length); // trimmed to the best chunk there is
        Assert.Equal(1, frag.CriterionHits(Criterion.BestAvailLen));
        Assert.Equal(12UL, frag.Allocate(new AllocRequest(12, 64)).Length); // whatever is free
        Assert.Equal(1, frag.CriterionHits(Criterion.AnyFree));
        Assert.Equal(0, frag.CriterionHits(Criterion.Power2Aligned) + frag.CriterionHits(Criterion.GoalLenFast));
    }

    /// <summary>ext4_mb_normalize_request's table, worked by hand: (block size, logical, length, i_size) -> window.</summary>
    [Theory]
    [InlineData(4096, 0, 1, 0, 0, 4)]             // 4 KiB -> 16 KiB
    [InlineData(4096, 10, 1, 0, 0, 16)]           // 44 KiB -> 64 KiB
    [InlineData(4096, 0, 1, 100 * 1024, 0, 32)]   // i_size 100 KiB -> 128 KiB
    [InlineData(4096, 200, 5, 0, 0, 256)]         // 820 KiB -> 1 MiB
    [InlineData(4096, 300, 1, 0, 0, 512)]         // 1.2 MiB -> a 2 MiB window at 0
    [InlineData(4096, 1000, 1, 0, 512, 512)]      // 3.9 MiB -> the 2 MiB window holding the request
    [InlineData(4096, 1500, 1, 0, 1024, 1024)]    // 5.9 MiB -> 4 MiB window at 4 MiB
    [InlineData(4096, 3000, 1, 0, 2048, 2048)]    // 11.7 MiB -> 8 MiB window at 8 MiB
    [InlineData(4096, 0, 4096, 0, 0, 2048)]       // 16 MiB request: with 4 KiB blocks NRL_CHECK_SIZE still picks 8 MiB
    [InlineData(8192, 0, 4096, 0, 0, 4096)]       // ...with 8 KiB blocks a request over 8 MiB is taken as is
    [InlineData(1024, 2000, 1, 0, 0, 2048)]       // 1 KiB blocks: anything past 1 MiB gets a 2 MiB window
    [InlineData(1024, 5000, 1, 0, 4096, 2048)]
    public void NormalizedWindow_KernelSizeClasses_Window(int blockBytes, ulong logical, ulong length, ulong fileSize, ulong start, ulong size)
    {
        var m = new Mballoc(Disk(0, 8192, 8192), (ulong)blockBytes);
        Assert.Equal((start, size), m.NormalizedWindow(logical, length, fileSize));
    }

    [Fact]
    public void AllocateForFile_OtherFilesPreallocationHoldsTheSpace_GivenBackBeforeEnospc()
    {
        var m = new Mballoc(Disk(0, 256, 256), 4096);
        Assert.Equal((0UL, 1UL), m.AllocateForFile(new FileAllocRequest(1, 0, 1) { FileSize = 1 << 20 }));
        Assert.Equal(255UL, m.PreallocationsOf(1).Single().Length); // the 1 MiB window: the whole group
        Assert.Equal(0, m.FreeClusters());
        var (s, n) = m.Allocate(new AllocRequest(0, 128, 128, Exact: true));
        Assert.Equal((128UL, 128UL), (s, n));
        Assert.Empty(m.PreallocationsOf(1));
        Assert.Equal(127, m.FreeClusters());
    }

    [Fact]
    public void AllocateForFile_AlignedUnits_ServedContiguouslyFromPreallocation()
    {
        var disk = Disk(1, 8192, 8192, i => i < 37); // groups start at 1; the first free cluster is 38
        var m = new Mballoc(disk, 1024);
        ulong? previous = null;
        for (ulong unit = 0; unit < 40; unit++)
        {
            var (s, n) = m.AllocateForFile(new FileAllocRequest(9, unit * 16, 16, 16, previous + 16 ?? 0) { FileSize = unit * 16 * 1024 });
            Assert.Equal(16UL, n);
            Assert.Equal(0UL, s % 16);
            if (previous != null) Assert.Equal(previous.Value + 16, s);
            previous = s;
        }
        Assert.True(m.CriterionHits(Criterion.GoalLenSlow) + m.CriterionHits(Criterion.GoalLenFast) + m.CriterionHits(Criterion.Power2Aligned) + m.CriterionHits(Criterion.Goal) < 10,
            "most units came from the preallocation, not from searches");
        m.DiscardPreallocations(9);
        Assert.Equal(8192 - 37 - 40 * 16, m.FreeClusters());
    }

    [Fact]
    public void AllocateForFile_LeftNeighbour_MergesAfterIt()
    {
        var m = new Mballoc(Disk(0, 4096, 4096, i => i < 501), 4096);
        var (s, n) = m.AllocateForFile(new FileAllocRequest(3, 10, 1) { Left = (9, 500), FileSize = 10 * 4096 });
        Assert.Equal((501UL, 1UL), (s, n));
        Assert.Equal((11UL, 502UL), (m.PreallocationsOf(3).Single().Logical, m.PreallocationsOf(3).Single().Physical));
    }

    [Fact]
    public void AlignmentInClusters_Bigalloc_BytesBecomeClusters()
    {
        var m = new Mballoc(Disk(0, 8192, 8192), 16384, blockBytes: 1024);
        Assert.Equal(4UL, m.AlignmentInClusters(64 * 1024));
        Assert.Equal(1UL, m.AlignmentInClusters(4096));
        Assert.Equal(Errno.EINVAL, Assert.Throws<Ext4Exception>(() => m.AlignmentInClusters(3 * 4096)).Errno);
    }

    [GeneratedRegex(@"^Group (\d+): .*\n(?:.*\n)*?\s+(\d+) free (?:blocks|clusters),", RegexOptions.Multiline)]
    private static partial Regex GroupFreeCount();

    /// <summary>The buddy of every group, built from the real bitmaps (BLOCK_UNINIT ones synthesized), against dumpe2fs.</summary>
    [Theory]
    [MemberData(nameof(TestImages.ConfigData), MemberType = typeof(TestImages))]
    public void Buddy_OnRealImage_FreeClustersPerGroupEqualDumpe2fs(string config)
    {
        TestImages.Require();
        using var fs = Ext4Fs.Open(TestImages.ImagePath(config), new OpenOptions { ReadOnly = true });
        var m = new Mballoc(new FsGroupBitmaps(fs), (ulong)fs.Super.ClusterSize, (ulong)fs.Super.BlockSize);
        var (rc, dump) = Tools.Run(Tools.RequireTool("dumpe2fs"), [TestImages.ImagePath(config)]);
        Assert.Equal(0, rc);
        var groups = GroupFreeCount().Matches(dump);
        Assert.Equal((int)fs.Super.GroupCount, groups.Count);
        foreach (Match g in groups)
        {
            uint group = uint.Parse(g.Groups[1].Value);
            Assert.True(long.Parse(g.Groups[2].Value) == m.Buddy(group).FreeCount, $"{config} group {group}: dumpe2fs {g.Groups[2].Value}, buddy {m.Buddy(group).FreeCount}");
            Assert.Equal(m.Buddy(group).LargestFreeOrder, m.IndexedOrder(group));
        }
    }
}
