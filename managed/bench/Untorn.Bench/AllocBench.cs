using System.Diagnostics;
using System.Numerics;

namespace Untorn.Bench;

/// <summary>
/// Issue 3's benchmark: aligned allocation of 16 KiB, 64 KiB and 1 MiB units (Mballoc.Allocate
/// with Align = Length, as untorn_alloc_aligned asks) on images made by mke2fs -t ext4 -b 4096 on
/// sparse files of 1 GiB, 64 GiB and 1 TiB, each empty and after a fragmentation pass, against a
/// brute-force scan of the same bitmaps (<see cref="BitmapScan"/>) in the same run.
/// Only memory changes: the engine opens the image read-only and its mballoc works on in-memory
/// buddies built from the on-disk bitmaps, so nothing 1 TiB wide is written.
/// </summary>
internal static class AllocBench
{
    private const ulong KiB = 1024, MiB = 1024 * KiB, GiB = 1024 * MiB;
    private const int BlockSize = 4096;
    private const int MaxRunBlocks = 2048; // fragmentation runs: log-uniform 1 .. 8 MiB
    private static readonly ulong[] UnitBytes = [16 * KiB, 64 * KiB, MiB];

    public static void Run(BenchOptions opts)
    {
        Console.WriteLine("== alloc: aligned allocation (issue 3) ==");
        if (Images.Which("mke2fs") == null)
        {
            Console.WriteLine("SKIP: mke2fs is not installed (apt-get install e2fsprogs)\n");
            return;
        }
        ulong[] sizes = opts.Quick ? [GiB] : [GiB, 64 * GiB, 1024 * GiB];
        int maxAllocs = opts.Quick ? 2000 : 20000;
        double baselineBudget = opts.Quick ? 0.5 : 4; // seconds of baseline scanning per cell at most
        Console.WriteLine($"""
            Each cell: up to {maxAllocs} aligned allocations (a unit of n blocks at a multiple of n), each call
            timed alone; afterwards they are freed, so every cell starts from the same state. Goals: random =
            uniform over the image (seeded; every call lands in a cold group), follow = right after the
            previous allocation (a file growing; the first goal random). Fragmented: every group is cut
            into consecutive runs of log-uniform length 1..{MaxRunBlocks} blocks and each run is marked used
            with probability 1/2 (Mballoc.Reserve, in memory; the same runs in the baseline's bitmaps).
            Baseline: first-fit bit-by-bit scan of the group bitmaps from the goal (at most {baselineBudget} s
            per cell). allocs/s = calls / their summed latency. ratio = baseline p50 / mballoc p50.

            """);
        var table = new Table("image", "state", "unit", "goals", "free units", "allocs", "mballoc/s", "p50 us", "p99 us",
            "scan allocs", "scan/s", "scan p50 us", "scan p99 us", "p50 ratio");
        var setup = new Table("image", "groups", "mke2fs s", "build buddies s", "fragment s", "free % after");
        var targets = new List<string>();
        foreach (ulong size in sizes)
        {
            string label = size >= 1024 * GiB ? $"{size / (1024 * GiB)} TiB" : $"{size / GiB} GiB";
            var sw = Stopwatch.StartNew();
            string path = Images.Make(opts.WorkDir, $"alloc-{size / GiB}g.img", (long)size);
            double mkfs = sw.Elapsed.TotalSeconds;
            using (var fs = Ext4Fs.Open(path, new OpenOptions { ReadOnly = true }))
            {
                var source = new FsGroupBitmaps(fs);
                var mballoc = new Mballoc(source, BlockSize);
                sw.Restart();
                for (uint g = 0; g < source.GroupCount; g++) mballoc.EnsureLoaded(source.GroupStart(g), 1);
                double build = sw.Elapsed.TotalSeconds;
                var scan = new BitmapScan(source);
                ulong total = scan.Total;
                if (size == sizes[0]) Warm(mballoc, scan, total);

                foreach (string state in (string[])["empty", "fragmented"])
                {
                    double frag = 0;
                    if (state == "fragmented")
                    {
                        sw.Restart();
                        Fragment(mballoc, scan, source, new Random(unchecked((int)size) ^ 0x5eed));
                        frag = sw.Elapsed.TotalSeconds;
                        setup.Add(label, source.GroupCount.ToString(), $"{mkfs:F1}", $"{build:F2}", $"{frag:F2}", $"{100.0 * mballoc.FreeClusters() / total:F1}");
                    }
                    foreach (ulong unitBytes in UnitBytes)
                    foreach (bool follow in (bool[])[false, true])
                    {
                        ulong n = unitBytes / BlockSize;
                        long free = mballoc.FreeChunks(BitOperations.Log2(n));
                        int count = (int)Math.Min(maxAllocs, free / 2);
                        var goals = Goals(new Random(1000 + (int)n), count, total);
                        var ours = MeasureMballoc(mballoc, goals, n, follow);
                        var theirs = MeasureScan(scan, goals, n, baselineBudget, follow);
                        double ratio = theirs.PercentileUs(50) / ours.PercentileUs(50);
                        table.Add(label, state, Unit(unitBytes), follow ? "follow" : "random", free.ToString(), ours.Count.ToString(), $"{ours.PerSecond:F0}",
                            $"{ours.PercentileUs(50):F2}", $"{ours.PercentileUs(99):F2}", theirs.Count.ToString(), $"{theirs.PerSecond:F0}",
                            $"{theirs.PercentileUs(50):F2}", $"{theirs.PercentileUs(99):F2}", $"{ratio:F1}x");
                        if (size == sizes[^1] && state == "fragmented")
                            targets.Add($"{Unit(unitBytes)}, {(follow ? "follow" : "random")} goals: p50 {ours.PercentileUs(50):F2} us at {label} fragmented: {(ours.PercentileUs(50) < 5 ? "under" : "OVER")} the 5 us target");
                    }
                }
            }
            Images.Delete(path);
        }
        setup.Print();
        table.Print();
        foreach (var t in targets) Console.WriteLine(t);
        Console.WriteLine();
    }

    private static string Unit(ulong bytes) => bytes >= MiB ? $"{bytes / MiB} MiB" : $"{bytes / KiB} KiB";

    private static ulong[] Goals(Random rng, int count, ulong total)
    {
        var goals = new ulong[count];
        for (int i = 0; i < count; i++) goals[i] = (ulong)rng.NextInt64((long)total);
        return goals;
    }

    private static Samples MeasureMballoc(Mballoc mballoc, ulong[] goals, ulong n, bool follow)
    {
        var samples = new Samples(goals.Length);
        var taken = new List<ulong>(goals.Length);
        ulong next = goals.Length > 0 ? goals[0] : 0;
        foreach (ulong g in goals)
        {
            ulong goal = follow ? next : g;
            long t0 = Stopwatch.GetTimestamp();
            var (start, _) = mballoc.Allocate(new AllocRequest(goal, n, n));
            samples.Add(Stopwatch.GetTimestamp() - t0);
            if (start % n != 0) throw new InvalidOperationException($"mballoc returned {start}, not {n}-aligned");
            taken.Add(start);
            next = start + n;
        }
        foreach (ulong s in taken) mballoc.Free(s, n);
        return samples;
    }

    private static Samples MeasureScan(BitmapScan scan, ulong[] goals, ulong n, double budgetSeconds, bool follow)
    {
        var samples = new Samples(goals.Length);
        var taken = new List<ulong>(goals.Length);
        long budget = (long)(budgetSeconds * Stopwatch.Frequency);
        ulong next = goals.Length > 0 ? goals[0] : 0;
        foreach (ulong g in goals)
        {
            ulong goal = follow ? next : g;
            long t0 = Stopwatch.GetTimestamp();
            ulong? start = scan.Allocate(goal, n);
            samples.Add(Stopwatch.GetTimestamp() - t0);
            if (start is not { } s) throw new InvalidOperationException("the baseline found no aligned run where mballoc counted free chunks");
            taken.Add(s);
            next = s + n;
            if (samples.TotalTicks > budget) break;
        }
        foreach (ulong s in taken) scan.Set(s, n, used: false);
        return samples;
    }

    // Both allocators once through every code path before anything is timed.
    private static void Warm(Mballoc mballoc, BitmapScan scan, ulong total)
    {
        foreach (ulong unit in UnitBytes)
        {
            ulong n = unit / BlockSize;
            var goals = Goals(new Random(7), 200, total);
            MeasureMballoc(mballoc, goals, n, follow: false);
            MeasureScan(scan, goals, n, 1, follow: false);
        }
    }

    // Cuts every group into runs of log-uniform length; each run is taken (in both allocators'
    // state) with probability 1/2, skipping clusters the image already uses.
    private static void Fragment(Mballoc mballoc, BitmapScan scan, IGroupBitmapSource source, Random rng)
    {
        double logMax = Math.Log(MaxRunBlocks + 1);
        for (uint g = 0; g < source.GroupCount; g++)
        {
            ulong c = source.GroupStart(g), end = c + source.ClustersInGroup(g);
            while (c < end)
            {
                ulong len = Math.Min((ulong)Math.Exp(rng.NextDouble() * logMax), end - c);
                if (len == 0) len = 1;
                if (rng.Next(2) == 0) TakeFree(mballoc, scan, c, c + len);
                c += len;
            }
        }
    }

    private static void TakeFree(Mballoc mballoc, BitmapScan scan, ulong lo, ulong hi)
    {
        ulong c = lo;
        while (c < hi)
        {
            while (c < hi && scan.IsUsed(c)) c++;
            ulong s = c;
            while (c < hi && !scan.IsUsed(c)) c++;
            if (c > s)
            {
                mballoc.Reserve(s, c - s);
                scan.Set(s, c - s, used: true);
            }
        }
    }
}
