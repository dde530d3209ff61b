using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// Seeded fuzzing of the read path: small mke2fs images (several configs, with htree, extent trees
/// of depth 1-2, inline data, symlinks) get random and metadata-targeted mutations; each mutated
/// image is opened and walked completely (readdir, statx, read, readlink). The only acceptable
/// outcomes are success and Ext4Exception; anything else, or a walk that does not finish within
/// its time budget, fails with the seed and iteration that reproduce it.
/// UNTORN_FUZZ_ITERATIONS (default 10000) and UNTORN_FUZZ_SEED select the run.
/// </summary>
public partial class FuzzTests
{
    private sealed record BaseImage(string Name, byte[] Bytes, int BlockSize, long[] MetadataOffsets);

    private static readonly Lazy<List<BaseImage>> Bases = new(MakeBases);

    [GeneratedRegex(@"(?:Group descriptors at|Block bitmap at|Inode bitmap at|Inode table at|Reserved GDT blocks at) (\d+)(?:-(\d+))?")]
    private static partial Regex MetadataRange();

    private static List<BaseImage> MakeBases()
    {
        var mke2fs = Tools.RequireTool("mke2fs");
        var e2fsck = Tools.RequireTool("e2fsck");
        var dumpe2fs = Tools.RequireTool("dumpe2fs");
        var dir = Path.Combine(Path.GetTempPath(), $"untorn-fuzz-{Guid.NewGuid():N}");
        var tree = Path.Combine(dir, "tree");
        Directory.CreateDirectory(Path.Combine(tree, "dir", "sub"));
        var rng = new Random(1);
        File.WriteAllText(Path.Combine(tree, "hello.txt"), "hello, fuzz\n");
        File.WriteAllBytes(Path.Combine(tree, "tiny"), [1, 2, 3]);
        var mid = new byte[70000];
        rng.NextBytes(mid);
        File.WriteAllBytes(Path.Combine(tree, "mid"), mid);
        // Every other 1 KiB block written: many extents, so trees of depth 1 or 2.
        using (var f = File.Create(Path.Combine(tree, "fragmented")))
            for (int i = 0; i < 300; i++)
            {
                f.Position = i * 2048L;
                f.Write(mid.AsSpan(i, 1024));
            }
        for (int i = 0; i < 150; i++) File.WriteAllText(Path.Combine(tree, "dir", $"entry-{i:D4}-{new string('x', i % 40)}"), i.ToString());
        File.WriteAllText(Path.Combine(tree, "dir", "sub", "deep.txt"), "deep");
        File.CreateSymbolicLink(Path.Combine(tree, "link-fast"), "hello.txt");
        File.CreateSymbolicLink(Path.Combine(tree, "link-slow"), "dir/sub/" + new string('s', 80) + "/../deep.txt");
        File.CreateSymbolicLink(Path.Combine(tree, "loop"), "loop");

        var configs = new (string Name, string Args)[]
        {
            ("4k-csum", "-t ext4 -b 4096"), ("1k", "-t ext4 -b 1024"), ("nocsum", "-t ext4 -b 1024 -O ^metadata_csum,^64bit"),
            ("ext3", "-t ext3 -b 1024"), ("inline", "-t ext4 -b 1024 -O inline_data"), ("bigalloc", "-t ext4 -b 1024 -O bigalloc -C 4096"),
        };
        var result = new List<BaseImage>();
        try
        {
            foreach (var (name, args) in configs)
            {
                var image = Path.Combine(dir, name + ".img");
                using (var f = File.Create(image)) f.SetLength(4 << 20);
                var (rc, output) = Tools.Run(mke2fs, ["-q", "-F", "-N", "256", .. args.Split(' '), "-d", tree, image]);
                Assert.True(rc == 0, $"{name}: {output}");
                Tools.Run(e2fsck, ["-fyD", image]);
                (rc, output) = Tools.Run(e2fsck, ["-fn", image]);
                Assert.True(rc == 0, $"{name}: {output}");
                (_, output) = Tools.Run(dumpe2fs, [image]);
                int bs = int.Parse(Regex.Match(output, @"Block size:\s+(\d+)").Groups[1].Value);
                var offsets = new List<long> { 1024 };
                foreach (Match m in MetadataRange().Matches(output))
                {
                    long first = long.Parse(m.Groups[1].Value), last = m.Groups[2].Success ? long.Parse(m.Groups[2].Value) : first;
                    for (long b = first; b <= Math.Min(last, first + 16); b++) offsets.Add(b * bs);
                }
                // Directory blocks and extent-tree node blocks, located by debugfs.
                var debugfs = Tools.RequireTool("debugfs");
                foreach (var d in new[] { "/", "/dir", "/dir/sub" })
                    foreach (var t in Tools.Run(debugfs, ["-R", $"blocks {d}", image]).Output.Split((char[])[' ', '\n'], StringSplitOptions.RemoveEmptyEntries))
                        if (t.All(char.IsAsciiDigit)) offsets.Add(long.Parse(t) * bs);
                foreach (Match m in Regex.Matches(Tools.Run(debugfs, ["-R", "stat /fragmented", image]).Output, @"\(ETB\d+\):(\d+)"))
                    offsets.Add(long.Parse(m.Groups[1].Value) * bs);
                result.Add(new BaseImage(name, File.ReadAllBytes(image), bs, offsets.ToArray()));
            }
        }
        finally { Directory.Delete(dir, true); }
        return result;
    }

    private static int Iterations => int.TryParse(Environment.GetEnvironmentVariable("UNTORN_FUZZ_ITERATIONS"), out int n) ? n : 10_000;
    private static int Seed => int.TryParse(Environment.GetEnvironmentVariable("UNTORN_FUZZ_SEED"), out int s) ? s : 20261124;

    [Fact]
    public void MutatedImages_OpenAndWalk_OnlyExt4ExceptionsNoHangs()
    {
        var bases = Bases.Value;
        int total = Iterations, seed = Seed, workers = Math.Max(2, Environment.ProcessorCount);
        int opened = 0, failedCleanly = 0;
        var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var sw = Stopwatch.StartNew();
        var threads = Enumerable.Range(0, workers).Select(w => new Thread(() =>
        {
            var work = bases.Select(b => b.Bytes.ToArray()).ToArray();
            for (int it = w; it < total && failures.IsEmpty; it += workers)
            {
                var rng = new Random(HashCode.Combine(seed, it));
                int which = rng.Next(bases.Count);
                var image = work[which];
                var undo = Mutate(rng, image, bases[which]);
                var outcome = RunWithWatchdog(image, TimeSpan.FromSeconds(5));
                if (outcome.Failure != null)
                    failures.Enqueue($"seed {seed} iteration {it} base {bases[which].Name}: {outcome.Failure}");
                else if (outcome.Opened) Interlocked.Increment(ref opened);
                else Interlocked.Increment(ref failedCleanly);
                foreach (var (off, b) in undo) image[off] = b;
            }
        }) { IsBackground = true }).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        Assert.True(failures.IsEmpty, string.Join("\n", failures));
        TestContext.Current.SendDiagnosticMessage(
            $"fuzz: {total} images in {sw.Elapsed.TotalSeconds:F1} s ({total / sw.Elapsed.TotalSeconds:F0}/s); {opened} walked, {failedCleanly} refused with an errno");
        Assert.True(opened > total / 10, $"only {opened} of {total} mutated images opened: mutations too destructive to reach deep code");
    }

    // Up to 8 mutations, most aimed at metadata (superblock, descriptors, bitmaps, inode tables),
    // the rest anywhere; returns what to restore.
    private static List<(int Offset, byte Value)> Mutate(Random rng, byte[] image, BaseImage b)
    {
        var undo = new List<(int, byte)>();
        int count = 1 + rng.Next(8);
        for (int i = 0; i < count; i++)
        {
            int at = rng.Next(10) < 7
                ? (int)(b.MetadataOffsets[rng.Next(b.MetadataOffsets.Length)] + rng.Next(b.BlockSize))
                : rng.Next(image.Length);
            at = Math.Min(at, image.Length - 4);
            for (int k = 0; k < 4; k++) undo.Add((at + k, image[at + k]));
            switch (rng.Next(5))
            {
                case 0: image[at] ^= (byte)(1 << rng.Next(8)); break;
                case 1: image[at] = (byte)rng.Next(256); break;
                case 2: image[at] = 0xFF; image[at + 1] = 0xFF; break;
                case 3: image.AsSpan(at, 4).Clear(); break;
                default: BitConverter.TryWriteBytes(image.AsSpan(at, 4), rng.Next(2) == 0 ? rng.Next(64) : rng.Next()); break;
            }
        }
        return undo;
    }

    private readonly record struct Outcome(bool Opened, string? Failure);

    private static Outcome RunWithWatchdog(byte[] image, TimeSpan budget)
    {
        Outcome result = new(false, "did not finish");
        var t = new Thread(() => result = Walk(image), 16 << 20) { IsBackground = true };
        t.Start();
        if (!t.Join(budget)) return new Outcome(false, $"walk did not finish within {budget.TotalSeconds} s (hang?)");
        return result;
    }

    private static Outcome Walk(byte[] image)
    {
        Ext4Fs fs;
        try { fs = Ext4Fs.Open(new MemoryBlockDevice(image, readOnly: true), new OpenOptions { ReadOnly = true }); }
        catch (Ext4Exception) { return new Outcome(false, null); }
        catch (Exception e) { return new Outcome(false, "open: " + e); }
        using (fs)
        {
            try { WalkDir(fs, "/", 0); }
            catch (Exception e) { return new Outcome(true, "walk: " + e); }
        }
        return new Outcome(true, null);
    }

    private static void WalkDir(Ext4Fs fs, string path, int depth)
    {
        if (depth > 8) return;
        List<DirEntry> entries;
        try
        {
            int fd = fs.Open(Encoding.UTF8.GetBytes(path), OpenFlags.RdOnly | OpenFlags.Directory, 0);
            try { entries = fs.ReadDir(fd, 2000); }
            finally { fs.Close(fd); }
        }
        catch (Ext4Exception) { return; }
        foreach (var e in entries)
        {
            var name = Encoding.UTF8.GetString(e.Name);
            if (name is "." or ".." || name.Contains('/') || name.Length == 0) continue;
            var child = path == "/" ? "/" + name : path + "/" + name;
            var bytes = Encoding.UTF8.GetBytes(child);
            try
            {
                var st = fs.Statx(AtFlags.Root, bytes, AtFlags.SymlinkNoFollow, StatxMask.BasicStats | StatxMask.Btime);
                ushort type = (ushort)(st.Mode & InodeMode.TypeMask);
                if (type == InodeMode.Dir) WalkDir(fs, child, depth + 1);
                else if (type == InodeMode.Symlink) fs.ReadLink(AtFlags.Root, bytes);
                else if (type == InodeMode.Regular) ReadCapped(fs, bytes);
            }
            catch (Ext4Exception) { }
        }
    }

    private static void ReadCapped(Ext4Fs fs, byte[] path)
    {
        int fd = fs.Open(path, OpenFlags.RdOnly, 0);
        try
        {
            var buf = new byte[65536];
            for (long off = 0; off < 1 << 20; off += buf.Length)
                if (fs.Pread(fd, buf, off) == 0) break;
        }
        finally { fs.Close(fd); }
    }
}
