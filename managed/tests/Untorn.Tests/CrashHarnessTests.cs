using System.Diagnostics;
using System.Text;

namespace Untorn.Tests;

/// <summary>
/// The crash-state harness. A seeded workload of namespace and file operations (create, mkdir,
/// unlink, rmdir, rename over files and across directories, link, symlink, ftruncate, fallocate
/// incl. punch and zero range, alloc_aligned, pwrite at random offsets, fsync, RWF_DSYNC, sync)
/// runs on a device that records every write and flush. Crash images are built from the record:
/// every prefix of the writes; every prefix with its next write torn at 512-byte sectors; and at
/// each flush, random subsets of the writes since the previous flush in random order, some torn
/// (a flush is a barrier: nothing before it may be lost). Images share the base bytes and the
/// recorded pages copy-on-write. Every crash image is opened by untorn (which replays the
/// journal) and must then pass untorn's own checker (Ext4Check) and equal the workload's model
/// after its first k operations, for some k no smaller than the last operation made durable
/// (jbd2 commits whole transactions in order): file bytes may differ only where a later
/// operation wrote in place. A deterministic sample of the images (the first state and every
/// prefix that ends at a flush, thinned by a seeded draw) also goes to <c>e2fsck -fn</c> after
/// untorn's recovery, and the same raw crash image is repaired by <c>e2fsck -fy</c> instead,
/// which must leave it <c>e2fsck -fn</c>-clean, checker-clean and equal to a model state too.
/// The base images hold a 40-entry htree directory (e2fsck -D) so name operations also go through
/// the index, and a nearly full one-block linear directory that the workload's creates convert to
/// an htree (make_indexed_dir; the "htree directories at the ends" count shows how often). The 4 KiB images use 2048 blocks per group so that group 1 has a backup superblock:
/// with metadata_csum and a single group, a primary superblock torn between its two sectors fails
/// its checksum with nothing to fall back to (the kernel refuses to mount it and e2fsck 1.47
/// cannot open it either). The counts are printed. Soak: <c>UNTORN_CRASH_SOAK=&lt;seconds&gt;</c> keeps running new
/// seeds per configuration for that long (e2fsck sampling as in the normal run).
/// </summary>
public class CrashHarnessTests
{
    private sealed class Counters
    {
        public long States, Fsck, Repairs, Writes, Ops, Unsynced, FsckTicks, IndexedDirs;
        public readonly System.Collections.Concurrent.ConcurrentDictionary<string, int> Kinds = new();
    }

    private const int OpsPerWorkload = 90, SubsetsPerFlush = 4, WorkloadsPerConfig = 24, FsckOneIn = 20;

    [Theory]
    [InlineData("-t ext4 -b 4096 -g 2048", 100)]
    [InlineData("-t ext4 -b 1024", 200)]
    [InlineData("-t ext4 -b 4096 -g 2048 -O ^metadata_csum,^64bit", 300)]
    [InlineData("-t ext4 -b 1024 -O bigalloc -C 4096 -g 2048", 400)] // -g: two groups, so a torn primary superblock has a backup
    public void MetadataWorkload_EveryCrashState_RecoversToADurablePrefixOfTheOperations(string mkfsArgs, int seed)
    {
        var dir = Path.Combine(Path.GetTempPath(), $"untorn-crash-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            var imagePath = Path.Combine(dir, "base.img");
            using (var fh = File.Create(imagePath)) fh.SetLength(16 << 20);
            // A directory of long names that e2fsck -D indexes: the workload's creates, unlinks and renames in it go through the htree.
            var big = Path.Combine(dir, "tree", "big");
            Directory.CreateDirectory(big);
            for (int i = 0; i < 40; i++) File.WriteAllBytes(Path.Combine(big, $"f{i}" + new string('y', 200)), []);
            FillOneBlock(Path.Combine(dir, "tree", "edge"), mkfsArgs);
            var (rc, output) = Tools.Run(Tools.RequireTool("mke2fs"), ["-q", "-F", .. mkfsArgs.Split(' '), "-d", Path.Combine(dir, "tree"), imagePath]);
            Assert.True(rc == 0, output);
            (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fyD", imagePath]);
            Assert.True(rc is 0 or 1, output);
            var baseImage = File.ReadAllBytes(imagePath);
            File.Delete(imagePath);

            var soak = Environment.GetEnvironmentVariable("UNTORN_CRASH_SOAK") is { Length: > 0 } s ? TimeSpan.FromSeconds(double.Parse(s, System.Globalization.CultureInfo.InvariantCulture)) : TimeSpan.Zero;
            var c = new Counters();
            var clock = Stopwatch.StartNew();
            int workloads = 0;
            do
            {
                int round = workloads;
                Parallel.For(0, 2, new ParallelOptions { MaxDegreeOfParallelism = 2 }, i =>
                        RunWorkload(baseImage, seed + round + i, c, dir, first: round + i == 0));
                workloads += 2;
            } while (workloads < WorkloadsPerConfig || clock.Elapsed < soak);
            var line = $"crash harness {mkfsArgs}: {c.States} crash states checked by untorn's recovery, checker and model " +
                       $"({workloads} workloads, {c.Ops} operations, {c.Writes} device writes); {c.Fsck} also by e2fsck -fn, " +
                       $"{c.Repairs} repaired by e2fsck -fy instead ({Stopwatch.GetElapsedTime(0, c.FsckTicks).TotalSeconds:F1} s of tool time); " +
                        $"{c.Unsynced} states kept un-synced operations; {c.IndexedDirs} htree directories at the ends; {clock.Elapsed.TotalSeconds:F1} s; operations: " +
                       string.Join(", ", c.Kinds.OrderBy(k => k.Key).Select(k => $"{k.Key} {k.Value}"));
            TestContext.Current.SendDiagnosticMessage(line);
            TestContext.Current.TestOutputHelper?.WriteLine(line);
            Assert.True(c.States > 200 * workloads, $"only {c.States} crash states from {workloads} workloads");
        }
        finally { Directory.Delete(dir, true); }
    }

    // A linear one-block directory (e2fsck -D leaves those unindexed) with ~40 bytes to spare:
    // the workload's first longer name in it converts it to an htree (make_indexed_dir).
    private static void FillOneBlock(string path, string mkfsArgs)
    {
        Directory.CreateDirectory(path);
        int bs = mkfsArgs.Contains("-b 4096") ? 4096 : 1024;
        int room = bs - 24 - (mkfsArgs.Contains("^metadata_csum") ? 0 : 12), i = 0; // "." and "..", checksum tail
        for (; room > 250; room -= 208) File.WriteAllBytes(Path.Combine(path, $"e{i++}".PadRight(200, 'z')), []);
        if (room > 48) File.WriteAllBytes(Path.Combine(path, $"e{i}".PadRight(room - 48, 'z')), []);
    }

    private static void RunWorkload(byte[] baseImage, int seed, Counters c, string dir, bool first)
    {
        var rec = new RecordingBlockDevice(baseImage.ToArray());
        var w = CrashWorkload.Run(rec, seed, OpsPerWorkload);
        Interlocked.Add(ref c.Ops, OpsPerWorkload);
        foreach (var name in w.OpNames.Skip(1)) c.Kinds.AddOrUpdate(name.Split(' ')[0], 1, (_, n) => n + 1);
        Interlocked.Add(ref c.Writes, rec.WriteCount);
        var rng = new Random(seed * 7919);
        var prefix = new Dictionary<long, byte[]>();
        var atFlush = new Dictionary<long, byte[]>();
        int writes = 0, writesAtFlush = 0;
        var since = new List<RecordingBlockDevice.Op>();
        var ops = rec.Ops;
        CheckState(new OverlayBlockDevice(baseImage, prefix), w, 0, $"seed {seed}: no writes", c, Path.Combine(dir, $"s{seed}"), fsck: first);
        for (int i = 0; i < ops.Count; i++)
        {
            var op = ops[i];
            if (op.Data == null)
            {
                for (int t = 0; t < SubsetsPerFlush && since.Count > 1; t++)
                {
                    var dev = new OverlayBlockDevice(baseImage, atFlush);
                    var subset = since.Where(_ => rng.Next(2) == 0).OrderBy(_ => rng.Next()).ToList();
                    foreach (var s in subset) WriteMaybeTorn(dev, s, rng, tear: rng.Next(4) == 0);
                    CheckState(dev, w, writesAtFlush, $"seed {seed}: {subset.Count} of the {since.Count} writes after write {writesAtFlush}, reordered", c, Path.Combine(dir, $"s{seed}"), fsck: false);
                }
                atFlush = new Dictionary<long, byte[]>(prefix);
                writesAtFlush = writes;
                since.Clear();
                continue;
            }
            if (op.Data.Length > 512 && rng.Next(2) == 0)
            {
                var torn = new OverlayBlockDevice(baseImage, prefix);
                WriteMaybeTorn(torn, op, rng, tear: true);
                CheckState(torn, w, writes, $"seed {seed}: {writes} writes and write {writes + 1} torn", c, Path.Combine(dir, $"s{seed}"), fsck: false);
            }
            OverlayBlockDevice.ApplyShared(prefix, baseImage, op.Offset, op.Data);
            writes++;
            since.Add(op);
            bool beforeFlush = i + 1 < ops.Count && ops[i + 1].Data == null;
            CheckState(new OverlayBlockDevice(baseImage, prefix), w, writes, $"seed {seed}: prefix of {writes} writes", c,
                Path.Combine(dir, $"s{seed}"), fsck: beforeFlush && rng.Next(FsckOneIn) == 0 || rng.Next(20 * FsckOneIn) == 0);
        }
        using var end = Ext4Fs.Open(new OverlayBlockDevice(baseImage, prefix, readOnly: true), new OpenOptions { ReadOnly = true });
        var tree = new Dictionary<string, Inode>();
        CrashWorkload.Walk(end, Ext4Fs.RootIno, "", tree);
        Interlocked.Add(ref c.IndexedDirs, tree.Values.Count(i => i.IsIndexedDir));
    }

    // A torn write: each 512-byte sector reaches the device or not.
    private static void WriteMaybeTorn(OverlayBlockDevice dev, RecordingBlockDevice.Op op, Random rng, bool tear)
    {
        if (!tear) { dev.Write(op.Offset, op.Data); return; }
        for (int at = 0; at < op.Data!.Length; at += 512)
            if (rng.Next(2) == 0) dev.Write(op.Offset + at, op.Data.AsSpan(at, Math.Min(512, op.Data.Length - at)));
    }

    private static void CheckState(OverlayBlockDevice dev, CrashWorkload w, int guaranteedWrites, string what, Counters c, string fileStem, bool fsck)
    {
        Interlocked.Increment(ref c.States);
        byte[]? raw = fsck ? dev.ToArray() : null;
        using (var fs = Ext4Fs.Open(dev, new OpenOptions { CommitInterval = TimeSpan.Zero }))
        {
            var problems = Ext4Check.Run(fs);
            Assert.True(problems.Count == 0, $"{what}: untorn's checker after untorn's recovery:\n{string.Join("\n", problems)}");
            var (k, minK) = VerifyAgainstModel(fs, w, guaranteedWrites, what);
            if (k > minK) Interlocked.Increment(ref c.Unsynced);
        }
        if (raw == null) return;
        long started = Stopwatch.GetTimestamp();
        var recovered = fileStem + ".recovered.img";
        File.WriteAllBytes(recovered, dev.ToArray());
        var (code, fsckOut) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", recovered]);
        Assert.True(code == 0, $"{what}: e2fsck -fn after untorn's recovery:\n{fsckOut}");
        Interlocked.Increment(ref c.Fsck);

        var repaired = fileStem + ".repaired.img";
        File.WriteAllBytes(repaired, raw);
        (code, fsckOut) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fy", repaired]);
        Assert.True(code is 0 or 1, $"{what}: e2fsck -fy on the crash image: exit {code}\n{fsckOut}");
        (code, fsckOut) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", repaired]);
        Assert.True(code == 0, $"{what}: e2fsck -fn after e2fsck -fy:\n{fsckOut}");
        using (var fs = Ext4Fs.Open(new MemoryBlockDevice(File.ReadAllBytes(repaired), readOnly: true), new OpenOptions { ReadOnly = true }))
        {
            var problems = Ext4Check.Run(fs);
            Assert.True(problems.Count == 0, $"{what}: untorn's checker after e2fsck's repair:\n{string.Join("\n", problems)}");
            VerifyAgainstModel(fs, w, guaranteedWrites, what + " (repaired by e2fsck -fy)");
        }
        Interlocked.Increment(ref c.Repairs);
        Interlocked.Add(ref c.FsckTicks, Stopwatch.GetTimestamp() - started);
    }

    /// <summary>The recovered tree must be the model after k operations, k at least the last durable one.</summary>
    private static (int K, int MinK) VerifyAgainstModel(Ext4Fs fs, CrashWorkload w, int guaranteedWrites, string what)
    {
        int minK = 0;
        for (int k = 0; k < w.DurableAt.Count; k++)
            if (w.DurableAt[k] <= guaranteedWrites) minK = k;
        var tree = new Dictionary<string, Inode>(StringComparer.Ordinal);
        CrashWorkload.Walk(fs, Ext4Fs.RootIno, "", tree);
        var fp = CrashWorkload.Fingerprint(tree.Select(kv => (kv.Key, Kind(kv.Value), (long)kv.Value.Number,
            kv.Value.IsSymlink ? Encoding.UTF8.GetString(fs.ReadLinkTarget(kv.Value)) : kv.Value.IsDir ? "" : kv.Value.Size.ToString())));
        var contents = new Dictionary<uint, byte[]>();
        byte[] content(Inode inode)
        {
            if (contents.TryGetValue(inode.Number, out var d)) return d;
            d = new byte[inode.Size];
            fs.ReadData(inode, d, 0);
            return contents[inode.Number] = d;
        }
        string? why = null;
        for (int k = w.States.Count - 1; k >= minK; k--)
        {
            if (w.Fingerprints[k] != fp) continue;
            why = ContentMismatch(w, k, tree, content);
            if (why == null) return (k, minK);
        }
        throw new Xunit.Sdk.XunitException($"{what}: the recovered tree is no model state from operation {minK} ('{w.OpNames[minK]}') on" +
                    (why != null ? $"; namespace matched but {why}" : $"\nrecovered:\n{fp}\nmodel after op {minK}:\n{w.Fingerprints[minK]}"));
    }

    private static char Kind(Inode i) => i.IsDir ? 'd' : i.IsSymlink ? 'l' : 'f';

    // Bytes that differ from model state k must have been written in place by a later operation.
    private static string? ContentMismatch(CrashWorkload w, int k, Dictionary<string, Inode> tree, Func<Inode, byte[]> content)
    {
        foreach (var (path, node) in w.States[k])
        {
            if (node.Kind != 'f') continue;
            var got = content(tree[path]);
            for (int i = 0; i < got.Length; i++)
            {
                if (got[i] == node.Data[i]) continue;
                bool later = w.InPlaceWrites.Any(p => p.Op > k && p.Node == node.Id && i >= p.Offset && i < p.Offset + p.Data.Length && p.Data[i - p.Offset] == got[i]);
                if (!later) return $"{path} byte {i} is {got[i]}, model after op {k} ('{w.OpNames[k]}') has {node.Data[i]}";
            }
        }
        return null;
    }
}
